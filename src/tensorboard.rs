//! TensorBoard event files: `out_dir/tensorboard/events.out.tfevents.*`, written by gptrain.
//!
//! A file is TFRecord framing around `Event` protocol buffers. Each record is
//! `u64 LE length | masked CRC-32C of those 8 bytes | data | masked CRC-32C of data`, and the first
//! event of a file names the format (`file_version = "brain.Event:2"`). The messages below are the
//! few parts of TensorFlow's `event.proto`, `summary.proto`, `tensor.proto` and
//! `tensor_shape.proto` that gptrain writes, with their field numbers.
//!
//! A run writes one new file. Its second event is a `SessionLog` START at the run's first
//! iteration N: TensorBoard's reader then drops what earlier files logged at steps >= N, so a
//! resumed run replaces what an interrupted one logged after its checkpoint instead of
//! duplicating it. The one thing a resumed run does not log again is the evaluation at N (the
//! checkpoint's own, made before it was written), so the new file carries it over from the old
//! ones.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------------
// the messages (tensorboard/compat/proto/*.proto)

#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(string, optional, tag = "3")]
    pub file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    pub summary: Option<Summary>,
    #[prost(message, optional, tag = "7")]
    pub session_log: Option<SessionLog>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionLog {
    /// `SessionStatus`: START = 1 (STOP = 2, CHECKPOINT = 3).
    #[prost(int32, tag = "1")]
    pub status: i32,
}

pub const SESSION_START: i32 = 1;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<Value>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Value {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
    #[prost(message, optional, tag = "8")]
    pub tensor: Option<TensorProto>,
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
    /// `DataClass`: SCALAR = 1, TENSOR = 2.
    #[prost(int32, tag = "4")]
    pub data_class: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PluginData {
    #[prost(string, tag = "1")]
    pub plugin_name: String,
    #[prost(bytes = "vec", tag = "2")]
    pub content: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// `DataType`: DT_STRING = 7.
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    /// No dimensions: a scalar.
    #[prost(message, optional, tag = "2")]
    pub tensor_shape: Option<TensorShapeProto>,
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub string_val: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {}

const DT_STRING: i32 = 7;
const DATA_CLASS_TENSOR: i32 = 2;

// ---------------------------------------------------------------------------------------------
// the framing

/// TensorFlow's masked CRC-32C (`crc32c::Mask`): rotated and offset, so that a CRC stored in
/// the data it covers does not check itself.
pub fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord: length, its masked CRC, the data, its masked CRC.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// The records of a file, each checked against both CRCs. A damaged or cut-off record (a run
/// killed mid-write) ends the list, as it ends TensorBoard's reading of the file.
pub fn read_records(bytes: &[u8]) -> (Vec<&[u8]>, Option<String>) {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let bad = |what: &str, at: usize| Some(format!("{what} at byte {at}"));
        let at = bytes.len() - rest.len();
        if rest.len() < 12 {
            return (out, bad("a cut-off record header", at));
        }
        let (len, crc) = (&rest[..8], u32::from_le_bytes(rest[8..12].try_into().unwrap()));
        if masked_crc(len) != crc {
            return (out, bad("a bad length CRC", at));
        }
        let n = u64::from_le_bytes(len.try_into().unwrap());
        if rest.len() < 16 || n > (rest.len() - 16) as u64 {
            return (out, bad("a cut-off record", at));
        }
        let n = n as usize;
        let data = &rest[12..12 + n];
        if masked_crc(data) != u32::from_le_bytes(rest[12 + n..16 + n].try_into().unwrap()) {
            return (out, bad("a bad data CRC", at));
        }
        out.push(data);
        rest = &rest[16 + n..];
    }
    (out, None)
}

// ---------------------------------------------------------------------------------------------
// the writer

/// The events files of a directory, oldest first (the order TensorBoard reads them in).
pub fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|rd| rd.flatten().map(|e| e.path()).filter(|p| file_time(p).is_some()).collect()).unwrap_or_default();
    files.sort();
    files
}

/// The seconds in an events file's name (`events.out.tfevents.<secs>.<host>...`).
fn file_time(p: &Path) -> Option<u64> {
    let name = p.file_name()?.to_str()?;
    name.strip_prefix("events.out.tfevents.")?.split('.').next()?.parse().ok()
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn hostname() -> String {
    let h = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let h: String = h.trim().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
    if h.is_empty() {
        "localhost".into()
    } else {
        h
    }
}

/// Appends events to one new events file.
pub struct EventWriter {
    file: std::fs::File,
    pub path: PathBuf,
}

impl EventWriter {
    /// Creates `dir` and a new events file in it whose name sorts after every events file
    /// already there (TensorBoard reads a directory's files in name order), and writes the
    /// file-version event.
    pub fn create(dir: &Path) -> io::Result<EventWriter> {
        std::fs::create_dir_all(dir)?;
        let wall = now();
        let newest = event_files(dir).iter().filter_map(|p| file_time(p)).max();
        let secs = newest.map_or(wall as u64, |t| (wall as u64).max(t + 1));
        let path = dir.join(format!("events.out.tfevents.{secs}.{}.{}.gptrain", hostname(), std::process::id()));
        let file = std::fs::OpenOptions::new().create_new(true).append(true).open(&path)?;
        let mut w = EventWriter { file, path };
        w.write(&Event { wall_time: wall, file_version: Some("brain.Event:2".into()), ..Default::default() })?;
        Ok(w)
    }

    /// Writes one event as one record (one `write` call, so nothing waits in a buffer).
    pub fn write(&mut self, event: &Event) -> io::Result<()> {
        self.file.write_all(&frame(&prost::Message::encode_to_vec(event)))
    }

    /// One event holding `values` (tag, value) at `step`.
    pub fn scalars(&mut self, step: u64, values: &[(&str, f32)]) -> io::Result<()> {
        let value = values.iter().map(|(tag, v)| Value { tag: tag.to_string(), simple_value: Some(*v), ..Default::default() }).collect();
        self.write(&summary_event(now(), step, value))
    }

    /// Text for TensorBoard's text dashboard (markdown), at `step`.
    pub fn text(&mut self, step: u64, tag: &str, text: &str) -> io::Result<()> {
        let value = Value {
            tag: tag.into(),
            metadata: Some(SummaryMetadata {
                plugin_data: Some(PluginData { plugin_name: "text".into(), content: Vec::new() }),
                data_class: DATA_CLASS_TENSOR,
            }),
            tensor: Some(TensorProto {
                dtype: DT_STRING,
                tensor_shape: Some(TensorShapeProto {}),
                string_val: vec![text.as_bytes().to_vec()],
            }),
            ..Default::default()
        };
        self.write(&summary_event(now(), step, vec![value]))
    }

    /// A session START at `step`: the reader forgets what earlier files logged at steps >= `step`.
    pub fn start(&mut self, step: u64) -> io::Result<()> {
        self.write(&Event {
            wall_time: now(),
            step: step as i64,
            session_log: Some(SessionLog { status: SESSION_START }),
            ..Default::default()
        })
    }
}

fn summary_event(wall_time: f64, step: u64, value: Vec<Value>) -> Event {
    Event { wall_time, step: step as i64, summary: Some(Summary { value }), ..Default::default() }
}

/// The scalars of a directory's events as TensorBoard's reader keeps them: files in name
/// order, a session START at step S dropping what came before at steps >= S, a later value for
/// the same (tag, step) replacing an earlier one. (tag, step) -> (wall time, value).
pub fn read_scalars(dir: &Path) -> BTreeMap<(String, i64), (f64, f32)> {
    read_scalars_of(&event_files(dir))
}

/// The scalars of these events files, read in this order as [`read_scalars`] reads a
/// directory's.
pub fn read_scalars_of(files: &[PathBuf]) -> BTreeMap<(String, i64), (f64, f32)> {
    let mut out = BTreeMap::new();
    for path in files {
        let Ok(bytes) = std::fs::read(path) else { continue };
        for rec in read_records(&bytes).0 {
            let Ok(ev) = <Event as prost::Message>::decode(rec) else { break };
            if ev.session_log.is_some_and(|s| s.status == SESSION_START) {
                out.retain(|k: &(String, i64), _| k.1 < ev.step);
            }
            for v in ev.summary.map(|s| s.value).unwrap_or_default() {
                if let Some(x) = v.simple_value {
                    out.insert((v.tag, ev.step), (ev.wall_time, x));
                }
            }
        }
    }
    out
}

/// Whether `bytes` begin as an events file does: a whole record holding an `Event` that
/// names the format (`brain.Event:2`), as every writer's first record does.
pub fn is_events_file(bytes: &[u8]) -> bool {
    let (records, _) = read_records(&bytes[..bytes.len().min(4096)]);
    records
        .first()
        .and_then(|r| <Event as prost::Message>::decode(*r).ok())
        .is_some_and(|e| e.file_version.is_some_and(|v| v.starts_with("brain.Event")))
}

/// The Hugging Face Trainer's end-of-training summary, logged at the last step: no step's.
const RUN_SUMMARY_TAGS: [&str; 5] =
    ["train/train_runtime", "train/train_samples_per_second", "train/train_steps_per_second", "train/total_flos", "train/train_loss"];

/// Scalars as JSON lines for `gptrain logs`, in step order, so that its JSON-lines reader reads
/// them by name. Per step: a row of the training scalars at the earliest wall time they were
/// logged at; a row of the evaluation's (tags with a `val`/`eval`/`test` part), which the
/// reader counts as an eval; and, when anything was logged at that step over 50 ms after the
/// training scalars (an evaluation), a row of the step alone at the latest wall time, so the
/// next interval starts after it (the reader restarts its window at a step seen again later).
/// Tags that count something else than steps (Megatron's `... vs samples`), step counters and
/// the end-of-run summary are left out.
pub fn json_lines(scalars: &BTreeMap<(String, i64), (f64, f32)>) -> String {
    use crate::perf::logs::{is_counter, is_eval_part};
    type Row = (f64, serde_json::Map<String, serde_json::Value>);
    let mut steps: BTreeMap<i64, (Option<Row>, Option<Row>, f64)> = BTreeMap::new();
    for ((tag, step), (wall, v)) in scalars {
        let lower = tag.to_ascii_lowercase();
        if tag.contains(" vs ") || is_counter(&lower) || RUN_SUMMARY_TAGS.contains(&tag.as_str()) {
            continue;
        }
        let (train, eval, latest) = steps.entry(*step).or_insert((None, None, f64::NEG_INFINITY));
        *latest = latest.max(*wall);
        let row = if is_eval_part(&lower) { eval } else { train };
        let (time, values) = row.get_or_insert((f64::INFINITY, serde_json::Map::new()));
        *time = time.min(*wall);
        values.insert(tag.clone(), serde_json::json!(*v as f64));
    }
    let mut out = String::new();
    let mut line = |step: i64, wall: f64, mut values: serde_json::Map<String, serde_json::Value>| {
        values.insert("step".into(), serde_json::json!(step));
        values.insert("_timestamp".into(), serde_json::json!(wall));
        out.push_str(&serde_json::Value::Object(values).to_string());
        out.push('\n');
    };
    for (step, (train, eval, latest)) in steps {
        let first = train.as_ref().map(|r| r.0);
        if let Some((wall, values)) = train {
            line(step, wall, values);
        }
        if let Some((wall, values)) = eval {
            line(step, wall, values);
        }
        if first.is_some_and(|f| latest - f > 0.05) {
            line(step, latest, serde_json::Map::new());
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// a training run's log

/// The tags of an evaluation.
pub const EVAL_TAGS: [&str; 2] = ["val/loss", "val/train_loss"];

/// A training run's TensorBoard log in `out_dir/tensorboard/`: per logged iteration the train
/// loss, learning rate, gradient norm and (after warm-up) steady ms/iter, tokens/s and MFU; per
/// evaluation both losses; the resolved config as text. Values are those metrics.jsonl records,
/// at the same step. A write that fails (a full disk) turns the log off with one warning:
/// TensorBoard never stops training.
pub struct TensorBoard {
    w: Option<EventWriter>,
}

impl TensorBoard {
    /// No log (`tensorboard = false`).
    pub fn off() -> TensorBoard {
        TensorBoard { w: None }
    }

    /// Opens a new events file for a run whose first iteration is `start`: a session START
    /// there, the evaluation at `start` carried over from earlier files unless this run
    /// evaluates there itself (`evaluates_at_start`), and `config` as text.
    pub fn open(out_dir: &Path, start: u64, evaluates_at_start: bool, config: &str) -> (TensorBoard, Option<String>) {
        let dir = out_dir.join("tensorboard");
        let carried: Vec<_> = if evaluates_at_start {
            Vec::new()
        } else {
            read_scalars(&dir).into_iter().filter(|((tag, step), _)| *step == start as i64 && EVAL_TAGS.contains(&tag.as_str())).collect()
        };
        let mut tb = TensorBoard { w: None };
        let r = (|| -> io::Result<EventWriter> {
            let mut w = EventWriter::create(&dir)?;
            w.start(start)?;
            for ((tag, step), (wall, v)) in carried {
                let value = vec![Value { tag, simple_value: Some(v), ..Default::default() }];
                w.write(&summary_event(wall, step as u64, value))?;
            }
            w.text(start, "config", config)?;
            Ok(w)
        })();
        let warning = match r {
            Ok(w) => {
                tb.w = Some(w);
                None
            }
            Err(e) => Some(failed(&dir, &e)),
        };
        (tb, warning)
    }

    /// A logged iteration, at step `log.iter`.
    pub fn iter(&mut self, log: &crate::train::IterLog) -> Option<String> {
        let r = &log.reading;
        let mut v = vec![("train/loss", log.loss), ("train/lr", log.lr), ("train/grad_norm", log.grad_norm)];
        let perf = [("perf/steady_ms_per_iter", r.steady_ms), ("perf/tokens_per_sec", r.tokens_per_sec), ("perf/mfu", r.mfu)];
        v.extend(perf.into_iter().filter_map(|(tag, x)| Some((tag, x? as f32))));
        self.scalars(log.iter, &v)
    }

    /// An evaluation before iteration `it`, at step `it`.
    pub fn eval(&mut self, it: u64, train_loss: f32, val_loss: f32) -> Option<String> {
        self.scalars(it, &[(EVAL_TAGS[0], val_loss), (EVAL_TAGS[1], train_loss)])
    }

    fn scalars(&mut self, step: u64, values: &[(&str, f32)]) -> Option<String> {
        let w = self.w.as_mut()?;
        let e = w.scalars(step, values).err()?;
        let dir = w.path.parent().unwrap_or(Path::new(".")).to_path_buf();
        self.w = None;
        Some(failed(&dir, &e))
    }
}

/// (key, value) rows as a markdown table, for the text dashboard.
pub fn markdown_table(rows: &[(&str, String)]) -> String {
    let cell = |s: &str| s.replace('|', "\\|");
    let mut out = String::from("| key | value |\n|---|---|\n");
    for (k, v) in rows {
        out += &format!("| {} | {} |\n", cell(k), cell(v));
    }
    out
}

fn failed(dir: &Path, e: &io::Error) -> String {
    format!("warning: cannot write TensorBoard events in {} ({e}); training goes on without them", dir.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crc_matches_tensorflow() {
        // CRC-32C's check value, and masked values from tensorboard's own Python implementation
        // (tensorboard.compat.tensorflow_stub.pywrap_tensorflow.masked_crc32c, tensorboard 2.21)
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(masked_crc(b""), 0xa282_ead8);
        assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
        assert_eq!(masked_crc(b"brain.Event:2"), 0x7c06_01ee);
        assert_eq!(masked_crc(&24u64.to_le_bytes()), 0x224b_7fa3);
    }

    /// Walks a written file byte by byte: every record's length, both masked CRCs (computed
    /// here from the definition), and the events prost decodes from it.
    #[test]
    fn written_records_have_tensorflows_framing() {
        let dir = std::env::temp_dir().join(format!("gptrain-tb-framing-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut w = EventWriter::create(&dir).unwrap();
        w.start(7).unwrap();
        w.scalars(7, &[("train/loss", 4.25), ("train/lr", 6e-4)]).unwrap();
        w.text(7, "config", "| key | value |").unwrap();
        let path = w.path.clone();
        drop(w);
        assert_eq!(event_files(&dir), vec![path.clone()]);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("events.out.tfevents.") && name.ends_with(&format!(".{}.gptrain", std::process::id())), "{name}");

        #[allow(clippy::manual_rotate)] // crc32c::Mask as TensorFlow spells it, not as `masked_crc` does
        let mask = |c: u32| ((c >> 15) | (c << 17)).wrapping_add(0xa282_ead8);
        let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let bytes = std::fs::read(&path).unwrap();
        let (mut pos, mut events) = (0, Vec::new());
        while pos < bytes.len() {
            let len = u64::from_le_bytes(bytes[pos..pos + 8].try_into().unwrap()) as usize;
            assert_eq!(u32_at(&bytes, pos + 8), mask(crc32c::crc32c(&bytes[pos..pos + 8])), "length CRC at {pos}");
            let data = &bytes[pos + 12..pos + 12 + len];
            assert_eq!(u32_at(&bytes, pos + 12 + len), mask(crc32c::crc32c(data)), "data CRC at {pos}");
            events.push(<Event as prost::Message>::decode(data).unwrap());
            pos += 16 + len;
        }
        assert_eq!(pos, bytes.len());
        assert_eq!(events.len(), 4);
        assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
        assert!(events[0].wall_time > 1.6e9);
        assert_eq!((events[1].step, events[1].session_log.clone()), (7, Some(SessionLog { status: SESSION_START })));
        let v = &events[2].summary.as_ref().unwrap().value;
        assert_eq!(
            (events[2].step, v.len(), v[0].tag.as_str(), v[0].simple_value, v[1].simple_value),
            (7, 2, "train/loss", Some(4.25), Some(6e-4))
        );
        let t = &events[3].summary.as_ref().unwrap().value[0];
        let tensor = t.tensor.as_ref().unwrap();
        assert_eq!((tensor.dtype, tensor.string_val.clone()), (DT_STRING, vec![b"| key | value |".to_vec()]));
        assert_eq!(t.metadata.as_ref().unwrap().plugin_data.as_ref().unwrap().plugin_name, "text");

        // a second writer's file sorts after the first, whatever the clock says
        let w2 = EventWriter::create(&dir).unwrap();
        assert_eq!(event_files(&dir), vec![path, w2.path.clone()]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_damaged_record_ends_the_reading() {
        let mut bytes = [frame(b"one"), frame(b"two")].concat();
        assert_eq!(read_records(&bytes), (vec![&b"one"[..], &b"two"[..]], None));
        let n = bytes.len();
        bytes[n - 5] ^= 1; // the second record's data
        let (recs, err) = read_records(&bytes);
        assert_eq!(recs, vec![&b"one"[..]]);
        assert!(err.unwrap().contains("data CRC"));
        let (recs, err) = read_records(&bytes[..n - 2]);
        assert_eq!(recs.len(), 1);
        assert!(err.unwrap().contains("cut-off"));
        let empty = frame(b"");
        for cut in 0..empty.len() {
            let (recs, err) = read_records(&empty[..cut]);
            assert!(recs.is_empty() && (cut == 0) == err.is_none(), "{cut}");
        }
    }
}

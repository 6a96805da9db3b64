//! TensorBoard event files: `out_dir/tensorboard/events.out.tfevents.*`, written by gptrain.
//!
//! A file is TFRecord framing around `Event` protocol buffers. Each record is
//! `u64 LE length | masked CRC-32C of those 8 bytes | data | masked CRC-32C of data`, and the first
//! event of a file names the format (`file_version = "brain.Event:2"`). The messages below are the
//! few parts of TensorFlow's `event.proto`, `summary.proto`, `tensor.proto` and
//! `tensor_shape.proto` that gptrain writes, and reads in other writers' files (TF2's scalars
//! are tensors), with their field numbers.
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
    /// `DataType` (`types.proto`): DT_FLOAT = 1, DT_DOUBLE = 2, DT_STRING = 7, ...
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    /// No dimensions (or none at all): a scalar.
    #[prost(message, optional, tag = "2")]
    pub tensor_shape: Option<TensorShapeProto>,
    /// The values' raw little-endian bytes, as TensorFlow's C++ writer stores every numeric
    /// tensor (`Tensor::AsProtoTensorContent`); else one of the typed fields below holds them.
    #[prost(bytes = "vec", tag = "4")]
    pub tensor_content: Vec<u8>,
    #[prost(float, repeated, tag = "5")]
    pub float_val: Vec<f32>,
    #[prost(double, repeated, tag = "6")]
    pub double_val: Vec<f64>,
    /// DT_INT32 (and the narrower ints).
    #[prost(int32, repeated, tag = "7")]
    pub int_val: Vec<i32>,
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub string_val: Vec<Vec<u8>>,
    #[prost(int64, repeated, tag = "10")]
    pub int64_val: Vec<i64>,
    /// DT_HALF and DT_BFLOAT16: each value's 16 bits in an int32.
    #[prost(int32, repeated, tag = "13")]
    pub half_val: Vec<i32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "2")]
    pub dim: Vec<Dim>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Dim {
    /// -1: unknown.
    #[prost(int64, tag = "1")]
    pub size: i64,
}

const DT_FLOAT: i32 = 1;
const DT_DOUBLE: i32 = 2;
const DT_INT32: i32 = 3;
const DT_STRING: i32 = 7;
const DT_INT64: i32 = 9;
const DT_BFLOAT16: i32 = 14;
const DT_HALF: i32 = 19;
const DATA_CLASS_SCALAR: i32 = 1;
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
                tensor_shape: Some(TensorShapeProto::default()),
                string_val: vec![text.as_bytes().to_vec()],
                ..Default::default()
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
/// directory's. A scalar is a `simple_value` (torch's SummaryWriter, TF1), or a one-value
/// tensor of a tag whose metadata names the scalars plugin (TF2's `tf.summary.scalar`, so
/// Keras; torch's `new_style`).
pub fn read_scalars_of(files: &[PathBuf]) -> Scalars {
    read_events(files).0
}

/// Scalars by (tag, step): (wall time, value).
pub type Scalars = BTreeMap<(String, i64), (f64, f32)>;

/// [`read_scalars_of`]'s scalars, and whether a Keras TensorBoard callback wrote the events: its
/// model is there, the `keras` tag of the `graph_keras_model` plugin (written with
/// `write_graph`, the default).
pub fn read_events(files: &[PathBuf]) -> (Scalars, bool) {
    let (mut out, mut keras) = (BTreeMap::new(), false);
    // tag -> whether its metadata says scalar. The first metadata of a tag decides, as in
    // TensorBoard's reader: Python writers write it with a tag's first value only (TF2's C++
    // writer with every value), so a later value without it is still that tag's kind
    let mut scalar_tags = std::collections::HashMap::new();
    for path in files {
        let Ok(bytes) = std::fs::read(path) else { continue };
        for rec in read_records(&bytes).0 {
            let Ok(ev) = <Event as prost::Message>::decode(rec) else { break };
            if ev.session_log.is_some_and(|s| s.status == SESSION_START) {
                out.retain(|k: &(String, i64), _| k.1 < ev.step);
            }
            for v in ev.summary.map(|s| s.value).unwrap_or_default() {
                if let Some(m) = &v.metadata {
                    scalar_tags.entry(v.tag.clone()).or_insert_with(|| is_scalar_metadata(m));
                    keras |= v.tag == "keras" && m.plugin_data.as_ref().is_some_and(|p| p.plugin_name == "graph_keras_model");
                }
                let tensor = || v.tensor.as_ref().filter(|_| scalar_tags.get(&v.tag) == Some(&true)).and_then(tensor_scalar);
                if let Some(x) = v.simple_value.or_else(tensor) {
                    out.insert((v.tag, ev.step), (ev.wall_time, x));
                }
            }
        }
    }
    (out, keras)
}

/// Whether a value's metadata makes it a scalar: the scalars plugin's (`plugin_name`
/// "scalars", which every TF2/Keras and torch tensor scalar carries and by which TensorBoard
/// puts a tag on its Scalars dashboard), or the scalar data class (TensorBoard's own newer
/// writers). Without this check a one-value tensor of another plugin (a text, a custom
/// plugin's datum) would be read as a metric.
fn is_scalar_metadata(m: &SummaryMetadata) -> bool {
    m.plugin_data.as_ref().is_some_and(|p| p.plugin_name == "scalars") || m.data_class == DATA_CLASS_SCALAR
}

/// The value of a tensor that holds exactly one number, as TensorBoard's `make_ndarray` reads
/// it: from `tensor_content` (little-endian bytes: TF2's C++ writer) when it is set, else from
/// the dtype's typed field (torch's `new_style`, tensorboard's Python writer), packed or not.
/// `tf.summary.scalar` casts to float32, but TensorBoard reads any numeric dtype, so doubles,
/// halves, bfloat16 and ints are read too. Anything else (several values: an image, a
/// histogram; strings, bools) is no scalar.
pub fn tensor_scalar(t: &TensorProto) -> Option<f32> {
    // no shape at all (torch's new_style) or no dimensions: rank 0, one element
    let dims = t.tensor_shape.as_ref().map_or(&[][..], |s| &s.dim[..]);
    if dims.iter().any(|d| d.size != 1) {
        return None;
    }
    let raw = &t.tensor_content[..];
    let v = match t.dtype {
        DT_FLOAT if raw.is_empty() => only(&t.float_val)?,
        DT_FLOAT => f32::from_le_bytes(raw.try_into().ok()?),
        DT_DOUBLE if raw.is_empty() => only(&t.double_val)? as f32,
        DT_DOUBLE => f64::from_le_bytes(raw.try_into().ok()?) as f32,
        DT_HALF | DT_BFLOAT16 => {
            // half_val keeps the 16 bits in an int32's low half
            let bits = if raw.is_empty() { only(&t.half_val)? as u16 } else { u16::from_le_bytes(raw.try_into().ok()?) };
            if t.dtype == DT_HALF {
                half::f16::from_bits(bits).to_f32()
            } else {
                half::bf16::from_bits(bits).to_f32()
            }
        }
        DT_INT32 if raw.is_empty() => only(&t.int_val)? as f32,
        DT_INT32 => i32::from_le_bytes(raw.try_into().ok()?) as f32,
        DT_INT64 if raw.is_empty() => only(&t.int64_val)? as f32,
        DT_INT64 => i64::from_le_bytes(raw.try_into().ok()?) as f32,
        _ => return None,
    };
    Some(v)
}

/// The one value of a typed field (one value repeated to fill a one-element shape is itself).
fn only<T: Copy>(values: &[T]) -> Option<T> {
    match values {
        [x] => Some(*x),
        _ => None,
    }
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
/// Tags that count something else than steps (Megatron's `... vs samples`, Keras's other
/// axis: [`other_axis`]), step counters and the end-of-run summary are left out.
///
/// `keras`: the events are a Keras TensorBoard callback's ([`read_events`]), whose epoch
/// axis (no `batch_*` tags) has epoch e's scalars at step e, from 0: its steps then count
/// epochs done (e + 1), as the other logs count iterations done, so that an ETA against the
/// fit's epochs ends at its last.
pub fn json_lines(scalars: &BTreeMap<(String, i64), (f64, f32)>, keras: bool) -> String {
    use crate::perf::logs::{is_counter, is_eval_part};
    type Row = (f64, serde_json::Map<String, serde_json::Value>);
    let other_axis = other_axis(scalars);
    let kept = |tag: &String| {
        let lower = tag.to_ascii_lowercase();
        !(tag.contains(" vs ") || other_axis(tag) || is_counter(&lower) || RUN_SUMMARY_TAGS.contains(&tag.as_str()))
    };
    let epochs = keras && !scalars.keys().any(|(tag, _)| leaf(tag).starts_with("batch_"));
    let mut steps: BTreeMap<i64, (Option<Row>, Option<Row>, f64)> = BTreeMap::new();
    for ((tag, step), (wall, v)) in scalars {
        if !kept(tag) {
            continue;
        }
        let lower = tag.to_ascii_lowercase();
        let (train, eval, latest) = steps.entry(step + epochs as i64).or_insert((None, None, f64::NEG_INFINITY));
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

/// A tag's last part: `validation/epoch_loss` is an epoch's.
fn leaf(tag: &str) -> &str {
    tag.rsplit('/').next().unwrap_or(tag)
}

/// Which tags count another axis than the run's iterations. Keras's TensorBoard callback logs
/// `epoch_<metric>` at the epoch's index, `batch_<metric>` (with `update_freq` "batch" or N) at
/// the count of batches trained, and `evaluation_<metric>_vs_iterations` at the optimizer's
/// iterations; one run's rows need one axis. With batch tags the batches are the iterations
/// and the epoch tags are left out; without, the epochs are, and the `_vs_iterations` tags
/// (batches) are left out.
fn other_axis(scalars: &BTreeMap<(String, i64), (f64, f32)>) -> fn(&str) -> bool {
    if scalars.keys().any(|(tag, _)| leaf(tag).starts_with("batch_")) {
        |tag| leaf(tag).starts_with("epoch_")
    } else {
        |tag| leaf(tag).ends_with("_vs_iterations")
    }
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

    /// A tensor of `dtype` and `shape` (None: no shape at all, as torch's new_style writes).
    fn tensor(dtype: i32, shape: Option<&[i64]>) -> TensorProto {
        let tensor_shape = shape.map(|s| TensorShapeProto { dim: s.iter().map(|&size| Dim { size }).collect() });
        TensorProto { dtype, tensor_shape, ..Default::default() }
    }

    #[test]
    fn tensor_scalars_from_their_bytes_or_their_typed_field() {
        // TF2's C++ writer: the raw little-endian bytes, shape with no dimensions
        let t = TensorProto { tensor_content: 0.4125f32.to_le_bytes().to_vec(), ..tensor(DT_FLOAT, Some(&[])) };
        assert_eq!(tensor_scalar(&t), Some(0.4125));
        let t = TensorProto { tensor_content: 2.5e-4f64.to_le_bytes().to_vec(), ..tensor(DT_DOUBLE, Some(&[])) };
        assert_eq!(tensor_scalar(&t), Some(2.5e-4f64 as f32));
        // half and bfloat16: two bytes, or the bits in half_val
        let t = TensorProto { tensor_content: half::f16::from_f32(1.5).to_le_bytes().to_vec(), ..tensor(DT_HALF, Some(&[])) };
        assert_eq!(tensor_scalar(&t), Some(1.5));
        let t = TensorProto { half_val: vec![half::f16::from_f32(-0.25).to_bits() as i32], ..tensor(DT_HALF, Some(&[])) };
        assert_eq!(tensor_scalar(&t), Some(-0.25));
        let t = TensorProto { half_val: vec![half::bf16::from_f32(3.0).to_bits() as i32], ..tensor(DT_BFLOAT16, None) };
        assert_eq!(tensor_scalar(&t), Some(3.0));
        // ints, as TensorBoard reads them
        let t = TensorProto { int64_val: vec![1875], ..tensor(DT_INT64, Some(&[])) };
        assert_eq!(tensor_scalar(&t), Some(1875.0));
        let t = TensorProto { tensor_content: (-7i32).to_le_bytes().to_vec(), ..tensor(DT_INT32, Some(&[])) };
        assert_eq!(tensor_scalar(&t), Some(-7.0));
        // torch's new_style: float_val / double_val, no shape; a one-element shape is one value too
        let t = TensorProto { float_val: vec![2.75], ..tensor(DT_FLOAT, None) };
        assert_eq!(tensor_scalar(&t), Some(2.75));
        let t = TensorProto { double_val: vec![0.125], ..tensor(DT_DOUBLE, Some(&[1, 1])) };
        assert_eq!(tensor_scalar(&t), Some(0.125));
        // float_val as it arrives on the wire: packed (what prost and TF write) and unpacked
        // (what a proto2-style writer may write; parsers must take both)
        let packed = [&[0x08, DT_FLOAT as u8, 0x2a, 4][..], &2.75f32.to_le_bytes()].concat();
        let unpacked = [&[0x08, DT_FLOAT as u8, 0x2d][..], &2.75f32.to_le_bytes()].concat();
        for bytes in [packed, unpacked] {
            let t = <TensorProto as prost::Message>::decode(&bytes[..]).unwrap();
            assert_eq!((t.float_val.clone(), tensor_scalar(&t)), (vec![2.75], Some(2.75)), "{bytes:?}");
        }
    }

    #[test]
    fn tensors_that_are_not_one_number_are_no_scalar() {
        // several values: a histogram's buckets, an image's bytes
        let two = [1.0f32.to_le_bytes(), 2.0f32.to_le_bytes()].concat();
        assert_eq!(tensor_scalar(&TensorProto { tensor_content: two.clone(), ..tensor(DT_FLOAT, Some(&[2])) }), None);
        assert_eq!(tensor_scalar(&TensorProto { float_val: vec![1.0, 2.0], ..tensor(DT_FLOAT, Some(&[2])) }), None);
        assert_eq!(tensor_scalar(&TensorProto { float_val: vec![1.0], ..tensor(DT_FLOAT, Some(&[3, 1])) }), None);
        assert_eq!(tensor_scalar(&TensorProto { float_val: vec![1.0], ..tensor(DT_FLOAT, Some(&[0])) }), None);
        // bytes that do not fit the dtype, no value at all, a string, a bool
        assert_eq!(tensor_scalar(&TensorProto { tensor_content: two, ..tensor(DT_FLOAT, Some(&[])) }), None);
        assert_eq!(tensor_scalar(&tensor(DT_FLOAT, Some(&[]))), None);
        assert_eq!(tensor_scalar(&TensorProto { string_val: vec![b"1.0".to_vec()], ..tensor(DT_STRING, Some(&[])) }), None);
        assert_eq!(tensor_scalar(&TensorProto { tensor_content: vec![1], ..tensor(10, Some(&[])) }), None);
    }

    /// A value holding a float32 tensor scalar as TF2 writes it, with `plugin`'s metadata or none.
    fn tf2_value(tag: &str, v: f32, plugin: Option<&str>) -> Value {
        Value {
            tag: tag.into(),
            tensor: Some(TensorProto { tensor_content: v.to_le_bytes().to_vec(), ..tensor(DT_FLOAT, Some(&[])) }),
            metadata: plugin
                .map(|p| SummaryMetadata { plugin_data: Some(PluginData { plugin_name: p.into(), content: Vec::new() }), data_class: 0 }),
            ..Default::default()
        }
    }

    #[test]
    fn tensor_scalars_are_read_by_their_tags_plugin() {
        let dir = std::env::temp_dir().join(format!("gptrain-tb-tensors-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let events = [
            summary_event(10.0, 0, vec![tf2_value("epoch_loss", 0.5, Some("scalars")), tf2_value("note", 7.0, Some("text"))]),
            // a Python writer's later values carry no metadata: still the tag's first kind
            summary_event(11.0, 1, vec![tf2_value("epoch_loss", 0.25, None), tf2_value("note", 8.0, None)]),
            // a tag never described: not known to be a scalar
            summary_event(12.0, 2, vec![tf2_value("mystery", 1.0, None)]),
        ];
        let path = dir.join("events.out.tfevents.1.host.v2");
        std::fs::write(&path, events.iter().flat_map(|e| frame(&prost::Message::encode_to_vec(e))).collect::<Vec<u8>>()).unwrap();
        let got: Vec<_> = read_scalars_of(&[path]).into_iter().collect();
        let want = vec![(("epoch_loss".to_string(), 0), (10.0, 0.5)), (("epoch_loss".to_string(), 1), (11.0, 0.25))];
        assert_eq!(got, want);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn keras_epoch_and_batch_tags_are_not_mixed_on_one_axis() {
        let scalars = |tags: &[(&str, i64)]| -> BTreeMap<(String, i64), (f64, f32)> {
            tags.iter().map(|(t, s)| ((t.to_string(), *s), (100.0 + *s as f64, 1.0))).collect()
        };
        let keys = |out: &str| -> Vec<String> {
            let mut k: Vec<String> = out
                .lines()
                .flat_map(|l| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(l).unwrap().into_iter().map(|(k, _)| k))
                .filter(|k| k != "step" && k != "_timestamp")
                .collect();
            k.sort();
            k.dedup();
            k
        };
        // update_freq="epoch": epochs are the axis; the evaluation at the optimizer's iterations is not
        let epochs = scalars(&[
            ("epoch_loss", 0),
            ("epoch_loss", 1),
            ("validation/epoch_loss", 1),
            ("validation/evaluation_loss_vs_iterations", 938),
        ]);
        assert_eq!(keys(&json_lines(&epochs, true)), ["epoch_loss", "validation/epoch_loss"]);
        // update_freq="batch": batches are, the evaluation at the iterations with them; the epochs' tags are not
        let batches = scalars(&[("batch_loss", 1), ("batch_loss", 2), ("epoch_loss", 0), ("validation/evaluation_loss_vs_iterations", 2)]);
        assert_eq!(keys(&json_lines(&batches, true)), ["batch_loss", "validation/evaluation_loss_vs_iterations"]);
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

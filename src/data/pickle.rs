//! Just enough of Python's pickle format to read nanoGPT's `meta.pkl` (a dict of ints,
//! strings and dicts, protocols 2-5). Anything else is a clear error, never a panic.

use anyhow::{bail, Result};
use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Mark,
}

impl Value {
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items.iter().find(|(k, _)| *k == Value::Str(key.into())).map(|(_, v)| v),
            _ => None,
        }
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.b.len() - self.pos {
            bail!("truncated pickle");
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn le(&mut self, n: usize) -> Result<u64> {
        Ok(self.take(n)?.iter().rev().fold(0u64, |a, &b| (a << 8) | b as u64))
    }
    fn string(&mut self, n: usize) -> Result<String> {
        Ok(String::from_utf8(self.take(n)?.to_vec())?)
    }
}

/// Parses a pickle into a [`Value`].
pub fn parse(bytes: &[u8]) -> Result<Value> {
    let mut r = Reader { b: bytes, pos: 0 };
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: HashMap<u64, Value> = HashMap::new();
    let pop_mark = |stack: &mut Vec<Value>| -> Result<Vec<Value>> {
        let m = stack.iter().rposition(|v| *v == Value::Mark).ok_or_else(|| anyhow::anyhow!("pickle: no mark"))?;
        let items = stack.split_off(m + 1);
        stack.pop();
        Ok(items)
    };
    loop {
        let op = r.u8()?;
        match op {
            0x80 => {
                r.u8()?; // PROTO
            }
            0x95 => {
                r.le(8)?; // FRAME
            }
            b'.' => return stack.pop().ok_or_else(|| anyhow::anyhow!("pickle: empty stack")),
            b'}' => stack.push(Value::Dict(Vec::new())),
            b']' => stack.push(Value::List(Vec::new())),
            b'(' => stack.push(Value::Mark),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'K' => {
                let v = r.le(1)? as i64;
                stack.push(Value::Int(v))
            }
            b'M' => {
                let v = r.le(2)? as i64;
                stack.push(Value::Int(v))
            }
            b'J' => {
                let v = r.le(4)? as u32 as i32 as i64;
                stack.push(Value::Int(v))
            }
            b'G' => {
                let v = f64::from_be_bytes(r.take(8)?.try_into()?);
                stack.push(Value::Float(v))
            }
            0x8c => {
                let n = r.le(1)? as usize;
                let s = r.string(n)?;
                stack.push(Value::Str(s))
            }
            b'X' => {
                let n = r.le(4)? as usize;
                let s = r.string(n)?;
                stack.push(Value::Str(s))
            }
            0x8d => {
                let n = r.le(8)? as usize;
                let s = r.string(n)?;
                stack.push(Value::Str(s))
            }
            0x94 => {
                let v = stack.last().cloned().ok_or_else(|| anyhow::anyhow!("pickle: memoize on empty stack"))?;
                memo.insert(memo.len() as u64, v);
            }
            b'q' | b'r' => {
                let i = r.le(if op == b'q' { 1 } else { 4 })?;
                let v = stack.last().cloned().ok_or_else(|| anyhow::anyhow!("pickle: put on empty stack"))?;
                memo.insert(i, v);
            }
            b'h' | b'j' => {
                let i = r.le(if op == b'h' { 1 } else { 4 })?;
                stack.push(memo.get(&i).cloned().ok_or_else(|| anyhow::anyhow!("pickle: unknown memo {i}"))?);
            }
            b's' | b'u' => {
                let items = if op == b'u' {
                    pop_mark(&mut stack)?
                } else {
                    let v = stack.pop();
                    let k = stack.pop();
                    match (k, v) {
                        (Some(k), Some(v)) => vec![k, v],
                        _ => bail!("pickle: setitem on short stack"),
                    }
                };
                match stack.last_mut() {
                    Some(Value::Dict(d)) => {
                        for kv in items.chunks_exact(2) {
                            d.push((kv[0].clone(), kv[1].clone()));
                        }
                    }
                    _ => bail!("pickle: setitems without a dict"),
                }
            }
            b'a' | b'e' => {
                let items = if op == b'e' { pop_mark(&mut stack)? } else { stack.pop().into_iter().collect() };
                match stack.last_mut() {
                    Some(Value::List(l)) => l.extend(items),
                    _ => bail!("pickle: append without a list"),
                }
            }
            other => bail!("unsupported pickle opcode 0x{other:02x} at byte {}", r.pos - 1),
        }
    }
}

/// Writes nanoGPT's char meta (`{'vocab_size': n, 'itos': {i: ch}, 'stoi': {ch: i}}`) as a
/// protocol-2 pickle.
pub fn write_char_meta(itos: &[String]) -> Vec<u8> {
    fn int(out: &mut Vec<u8>, v: usize) {
        if v < 256 {
            out.extend([b'K', v as u8]);
        } else if v < 65536 {
            out.push(b'M');
            out.extend((v as u16).to_le_bytes());
        } else {
            out.push(b'J');
            out.extend((v as i32).to_le_bytes());
        }
    }
    fn string(out: &mut Vec<u8>, s: &str) {
        out.push(b'X');
        out.extend((s.len() as u32).to_le_bytes());
        out.extend(s.as_bytes());
    }
    let mut out = vec![0x80, 2, b'}', b'('];
    string(&mut out, "vocab_size");
    int(&mut out, itos.len());
    string(&mut out, "itos");
    out.extend([b'}', b'(']);
    for (i, s) in itos.iter().enumerate() {
        int(&mut out, i);
        string(&mut out, s);
    }
    out.push(b'u');
    string(&mut out, "stoi");
    out.extend([b'}', b'(']);
    for (i, s) in itos.iter().enumerate() {
        string(&mut out, s);
        int(&mut out, i);
    }
    out.extend([b'u', b'u', b'.']);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_meta_reads_back() {
        let itos: Vec<String> = ["\n", " ", "a", "é"].iter().map(|s| s.to_string()).collect();
        let v = parse(&write_char_meta(&itos)).unwrap();
        assert_eq!(v.get("vocab_size"), Some(&Value::Int(4)));
        let Some(Value::Dict(d)) = v.get("itos") else { panic!() };
        assert_eq!(d[3], (Value::Int(3), Value::Str("é".into())));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&b""[..], b"\x80\x04\x95", b"}(Xabc", b"\xff\xff", b"(u.", b"h\x05."] {
            assert!(parse(bytes).is_err(), "{bytes:?}");
        }
    }
}

//! Log drains in runc's formats: logrus-style text (`time="…" level=error
//! msg="…"`) or one JSON object per line (`{"level":"error","msg":"…",
//! "time":"…"}`), which containerd and conmon read back to show errors.

use std::fmt::{self, Write as _};
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};
use slog::{Drain, Key, Level, OwnedKVList, Record, Serializer, KV};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

impl Format {
    pub fn parse(s: Option<&str>) -> Result<Self> {
        match s {
            None | Some("text") => Ok(Format::Text),
            Some("json") => Ok(Format::Json),
            Some(other) => anyhow::bail!("invalid log-format: {other}"),
        }
    }
}

pub struct LineDrain {
    out: Mutex<Box<dyn Write + Send>>,
    format: Format,
    min: Level,
}

impl LineDrain {
    pub fn new(out: Box<dyn Write + Send>, format: Format, min: Level) -> Self {
        LineDrain {
            out: Mutex::new(out),
            format,
            min,
        }
    }

    pub fn file(path: &Path, format: Format, min: Level) -> Result<Self> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("open log file {}", path.display()))?;
        Ok(Self::new(Box::new(f), format, min))
    }
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::Critical => "fatal",
        Level::Error => "error",
        Level::Warning => "warning",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

/// Collects a record's key-value pairs as strings.
#[derive(Default)]
struct Pairs(Vec<(String, String)>);

impl Serializer for Pairs {
    fn emit_arguments(&mut self, key: Key, val: &fmt::Arguments) -> slog::Result {
        self.0.push((key.to_string(), val.to_string()));
        Ok(())
    }
}

fn text_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Drain for LineDrain {
    type Ok = ();
    type Err = io::Error;

    fn log(&self, record: &Record, values: &OwnedKVList) -> io::Result<()> {
        if !record.level().is_at_least(self.min) {
            return Ok(());
        }
        let mut pairs = Pairs::default();
        let _ = record.kv().serialize(record, &mut pairs);
        let _ = values.serialize(record, &mut pairs);
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let level = level_name(record.level());
        let msg = record.msg().to_string();
        let line = match self.format {
            Format::Json => {
                let mut obj = serde_json::Map::new();
                obj.insert("level".into(), level.into());
                obj.insert("msg".into(), msg.into());
                obj.insert("time".into(), time.into());
                for (k, v) in pairs.0 {
                    obj.entry(k).or_insert(v.into());
                }
                serde_json::Value::Object(obj).to_string()
            }
            Format::Text => {
                let mut line = format!(
                    "time={} level={} msg={}",
                    text_quote(&time),
                    level,
                    text_quote(&msg)
                );
                for (k, v) in pairs.0 {
                    let _ = write!(line, " {k}={}", text_quote(&v));
                }
                line
            }
        };
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        writeln!(out, "{line}")?;
        out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn log_with(format: Format) -> String {
        let buf = Buf::default();
        let drain = LineDrain::new(Box::new(buf.clone()), format, Level::Warning);
        let log = slog::Logger::root(drain.fuse(), slog::o!());
        slog::info!(log, "hidden");
        slog::error!(log, "container does not exist"; "id" => "c1");
        let out = buf.0.lock().unwrap().clone();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn json_lines_carry_level_and_msg_as_containerd_reads_them() {
        let out = log_with(Format::Json);
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "container does not exist");
        assert_eq!(v["id"], "c1");
    }

    #[test]
    fn text_lines_look_like_logrus() {
        let out = log_with(Format::Text);
        assert!(out.starts_with("time=\""), "{out}");
        assert!(out.contains(" level=error msg=\"container does not exist\" id=\"c1\""));
        assert!(!out.contains("hidden"));
    }
}

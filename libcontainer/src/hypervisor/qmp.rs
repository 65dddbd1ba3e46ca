//! A small blocking QMP client.
//!
//! Why not the `qapi` crate: runvm needs about ten commands, and `qapi`'s
//! types are generated from one QEMU release's schema, while runvm runs
//! against whatever QEMU the host has (7.2 in bookworm, 10.0 in backports; the
//! migration commands it needs changed in between). QMP itself is one JSON
//! object per line, which is little code to speak directly.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("connect to {path}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("QMP I/O")]
    Io(#[from] io::Error),
    #[error("QMP connection closed")]
    Closed,
    #[error("bad QMP message {0:?}")]
    Protocol(String),
    #[error("{command}: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connect, waiting up to `timeout` for the socket to accept, and leave
    /// capabilities negotiation mode. `alive` says whether it is still worth
    /// waiting (the QEMU process has not exited).
    pub fn connect(
        path: &Path,
        timeout: Duration,
        alive: impl Fn() -> bool,
    ) -> Result<Self, QmpError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline && alive() => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(source) => {
                    return Err(QmpError::Connect {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            }
        };
        stream.set_read_timeout(Some(timeout))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(greeting.to_string()));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    pub fn set_timeout(&self, timeout: Duration) -> Result<(), QmpError> {
        self.writer.set_read_timeout(Some(timeout))?;
        Ok(())
    }

    fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(QmpError::Closed);
        }
        serde_json::from_str(&line).map_err(|_| QmpError::Protocol(line.trim().to_string()))
    }

    /// Run one command and return its `return` value; events are skipped.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let mut msg = json!({ "execute": command });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes())?;
        loop {
            let reply = self.read_message()?;
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                let s = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: s("class"),
                    desc: s("desc"),
                });
            }
            // An asynchronous event: not the reply we wait for.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A scripted QMP server: checks each request, sends canned replies.
    fn serve(listener: UnixListener, script: Vec<(&'static str, &'static str)>) {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut w = stream;
        w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
            .unwrap();
        for (expect, reply) in script {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let v: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["execute"], expect);
            w.write_all(reply.as_bytes()).unwrap();
        }
    }

    #[test]
    fn negotiates_skips_events_and_reports_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            serve(
                listener,
                vec![
                    ("qmp_capabilities", "{\"return\": {}}\n"),
                    ("stop", "{\"event\": \"STOP\", \"data\": {}}\n{\"return\": {}}\n"),
                    (
                        "device_add",
                        "{\"error\": {\"class\": \"GenericError\", \"desc\": \"Bus 'rp9' not found\"}}\n",
                    ),
                ],
            )
        });
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5), || true).unwrap();
        assert_eq!(qmp.execute("stop", None).unwrap(), json!({}));
        let err = qmp
            .execute("device_add", Some(json!({"bus": "rp9"})))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "device_add: GenericError: Bus 'rp9' not found"
        );
        server.join().unwrap();
    }

    #[test]
    fn gives_up_when_the_process_is_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let err = Qmp::connect(
            &tmp.path().join("none.sock"),
            Duration::from_secs(30),
            || false,
        );
        assert!(matches!(err, Err(QmpError::Connect { .. })));
    }
}

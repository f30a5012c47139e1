//! Google's Pub/Sub emulator, started by the tests and the bench: the `cloud-pubsub-emulator`
//! script of the Google Cloud SDK (Debian package `google-cloud-cli-pubsub-emulator`, which
//! needs Java), found from `$SECRETD_PUBSUB_EMULATOR` or from `gcloud`. Topics, subscriptions
//! and messages go through its REST API; the daemon talks gRPC to the same port. Not a fake:
//! Google's own implementation, which is why the tests use it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// How long the emulator (a JVM) may take to answer after it starts.
pub const EMULATOR_START_TIMEOUT: Duration = Duration::from_secs(90);

/// The project the topics and subscriptions live in.
pub const PROJECT: &str = "apex-test";

/// Where the emulator's start script is, if this machine has it.
pub fn emulator_script() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SECRETD_PUBSUB_EMULATOR") {
        return Some(PathBuf::from(path)).filter(|p| p.exists());
    }
    let out = Command::new("gcloud")
        .args(["info", "--format=value(installation.sdk_root)"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let root = String::from_utf8(out.stdout).ok()?;
    let script =
        PathBuf::from(root.trim()).join("platform/pubsub-emulator/bin/cloud-pubsub-emulator");
    (script.exists() && Command::new("java").arg("-version").output().is_ok()).then_some(script)
}

/// A running emulator; killed (with its Java process) on drop.
/// Why the emulator could not be started or did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// No loopback port was free.
    #[error("no free port: {0}")]
    Port(#[source] std::io::Error),
    /// The start script could not run.
    #[error("cannot start the Pub/Sub emulator {}: {source}", script.display())]
    Start {
        /// The script.
        script: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It started but did not answer in time.
    #[error("the Pub/Sub emulator did not answer within {0:?}")]
    NotAnswering(Duration),
    /// A REST call could not be made.
    #[error("{method} {path} on the Pub/Sub emulator: {source}")]
    Request {
        /// The HTTP method.
        method: String,
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A REST call was answered with an unexpected status.
    #[error("{method} {path} on the Pub/Sub emulator: {code} {answer}")]
    Refused {
        /// The HTTP method.
        method: String,
        /// The path.
        path: String,
        /// The status code.
        code: u16,
        /// The body.
        answer: String,
    },
}

#[derive(Debug)]
pub struct Emulator {
    /// Where it listens.
    pub port: u16,
    /// The start script's process, leader of its own process group.
    child: Child,
}

impl Emulator {
    /// Starts an emulator on a free port and waits until it answers.
    pub fn start(script: &PathBuf) -> Result<Emulator, EmulatorError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(EmulatorError::Port)?
            .port();
        Emulator::start_on(script, port)
    }

    /// Starts an emulator on `port` (a restart reuses the port the daemon knows) and waits
    /// until it answers.
    pub fn start_on(script: &PathBuf, port: u16) -> Result<Emulator, EmulatorError> {
        let child = Command::new(script)
            .arg("--host=127.0.0.1")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|source| EmulatorError::Start {
                script: script.clone(),
                source,
            })?;
        let emulator = Emulator { port, child };
        let deadline = Instant::now() + EMULATOR_START_TIMEOUT;
        let topics = format!("/v1/projects/{PROJECT}/topics");
        while !request(port, "GET", &topics, "").is_ok_and(|(code, _)| code == 200) {
            if Instant::now() > deadline {
                return Err(EmulatorError::NotAnswering(EMULATOR_START_TIMEOUT));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(emulator)
    }

    /// The endpoint for `[gsm.notifications] endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates topic `topic` and pull subscription `subscription` on it; returns the
    /// subscription's full name.
    pub fn topic_and_subscription(
        &self,
        topic: &str,
        subscription: &str,
    ) -> Result<String, EmulatorError> {
        let topic_name = self.topic(topic)?;
        self.subscription(&topic_name, subscription)
    }

    /// Creates topic `topic`; returns its full name.
    pub fn topic(&self, topic: &str) -> Result<String, EmulatorError> {
        let topic_name = format!("projects/{PROJECT}/topics/{topic}");
        self.call("PUT", &format!("/v1/{topic_name}"), "{}", &[200])?;
        Ok(topic_name)
    }

    /// Creates pull subscription `subscription` on the existing topic `topic_name` (a full
    /// name); returns the subscription's full name.
    pub fn subscription(
        &self,
        topic_name: &str,
        subscription: &str,
    ) -> Result<String, EmulatorError> {
        let sub_name = format!("projects/{PROJECT}/subscriptions/{subscription}");
        let body = serde_json::json!({"topic": topic_name, "ackDeadlineSeconds": 10});
        self.call("PUT", &format!("/v1/{sub_name}"), &body.to_string(), &[200])?;
        Ok(sub_name)
    }

    /// Deletes subscription `sub_name` (a full name), as Pub/Sub does to one unused for 31
    /// days.
    pub fn delete_subscription(&self, sub_name: &str) -> Result<(), EmulatorError> {
        self.call("DELETE", &format!("/v1/{sub_name}"), "", &[200])?;
        Ok(())
    }

    /// Publishes messages with these attributes (and a small JSON body, as GSM sends) to
    /// `topic`, in batches.
    pub fn publish(
        &self,
        topic: &str,
        messages: &[serde_json::Value],
    ) -> Result<(), EmulatorError> {
        let plain = serde_json::json!({"name": "projects/0/secrets/x"});
        let with_data: Vec<_> = messages
            .iter()
            .map(|a| (a.clone(), plain.clone()))
            .collect();
        self.publish_with_data(topic, &with_data)
    }

    /// Publishes messages with these attributes and data (GSM's data is the secret or
    /// version as JSON: a `SECRET_UPDATE` carries `versionAliases`).
    pub fn publish_with_data(
        &self,
        topic: &str,
        messages: &[(serde_json::Value, serde_json::Value)],
    ) -> Result<(), EmulatorError> {
        for batch in messages.chunks(100) {
            let list: Vec<serde_json::Value> = batch
                .iter()
                .map(|(attributes, data)| {
                    serde_json::json!({
                        "attributes": attributes,
                        "data": B64.encode(data.to_string()),
                    })
                })
                .collect();
            self.call(
                "POST",
                &format!("/v1/projects/{PROJECT}/topics/{topic}:publish"),
                &serde_json::json!({ "messages": list }).to_string(),
                &[200],
            )?;
        }
        Ok(())
    }

    /// The process group of the emulator (its script and Java), for a kill at exit when the
    /// emulator lives in a static and is never dropped.
    pub fn process_group(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(0)
    }

    /// Pulls what `subscription` (its full name) can deliver right now, as another subscriber
    /// would, without acknowledging it; returns each message's attributes. A message another
    /// client holds under its lease is not among them; one it nacked is.
    pub fn pull_now(&self, subscription: &str) -> Result<Vec<serde_json::Value>, EmulatorError> {
        let body = serde_json::json!({"maxMessages": 100, "returnImmediately": true});
        let answer = self.call_answer(
            "POST",
            &format!("/v1/{subscription}:pull"),
            &body.to_string(),
            &[200],
        )?;
        let parsed: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
        Ok(parsed["receivedMessages"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|m| m["message"]["attributes"].clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    /// One REST call that must answer one of `ok` codes.
    fn call(&self, method: &str, path: &str, body: &str, ok: &[u16]) -> Result<(), EmulatorError> {
        self.call_answer(method, path, body, ok).map(drop)
    }

    /// [`Emulator::call`], returning the answer's body.
    fn call_answer(
        &self,
        method: &str,
        path: &str,
        body: &str,
        ok: &[u16],
    ) -> Result<String, EmulatorError> {
        let (code, answer) =
            request(self.port, method, path, body).map_err(|source| EmulatorError::Request {
                method: method.to_owned(),
                path: path.to_owned(),
                source,
            })?;
        if ok.contains(&code) {
            return Ok(answer);
        }
        Err(EmulatorError::Refused {
            method: method.to_owned(),
            path: path.to_owned(),
            code,
            answer,
        })
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        // The script starts Java in the same process group: end them all.
        // SAFETY: kill with a valid process group id and signal number.
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// The attributes GSM puts on a notification.
pub fn gsm_event(event: &str, secret_id: &str, version: Option<u64>) -> serde_json::Value {
    let mut attributes = serde_json::json!({
        "eventType": event,
        "dataFormat": "JSON_API_V1",
        "secretId": secret_id,
        "timestamp": "2026-11-30T01:00:00.000000-00:00",
    });
    if let Some(v) = version {
        attributes["versionId"] = format!("{secret_id}/versions/{v}").into();
    }
    attributes
}

/// One plain HTTP/1.1 request; returns (status code, body). The emulator keeps connections
/// open whatever the request says, so the body is read by its `content-length`.
fn request(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_len, content_length) = loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&chunk[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (end + 4, length);
        }
    };
    while got.len() < head_len + content_length {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, text[head_len.min(text.len())..].to_owned()))
}

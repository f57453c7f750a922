//! The `serve-local` binary as users run it: the official `openai` Python client drives it
//! (`openai_client.py`), and SIGTERM lets an in-flight stream finish before it exits 0.
//!
//! Python: `$LMQ_PYTHON`, else the cache's `venv-openai` (made by `.ci/run`), else `python3`.
//! Without the `openai` package the client half is skipped with a message, unless
//! `LMQ_REQUIRE_OPENAI=1` (CI) makes that a failure.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lmq_runtime::assets::{cache_dir, ensure, Asset};

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start() -> Server {
    ensure(Asset::SmolLm2).expect("SmolLM2 asset");
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_serve-local"))
        .args(["--model", "smollm2", "--max-context", "2048", "--port"])
        .arg(port.to_string())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting serve-local");
    let url = format!("http://127.0.0.1:{port}");
    let t0 = Instant::now();
    loop {
        if let Ok(r) = reqwest::get(format!("{url}/health")).await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "serve-local did not come up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Server { child, url }
}

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("LMQ_PYTHON") {
        return p.into();
    }
    let venv = cache_dir().join("venv-openai/bin/python");
    if venv.exists() {
        venv
    } else {
        "python3".into()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_client_drives_the_server() {
    let py = python();
    let has_openai = Command::new(&py)
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_openai {
        assert!(
            std::env::var("LMQ_REQUIRE_OPENAI").as_deref() != Ok("1"),
            "LMQ_REQUIRE_OPENAI=1 but {} cannot import openai",
            py.display()
        );
        eprintln!(
            "SKIPPED: {} has no `openai` package (pip install openai)",
            py.display()
        );
        return;
    }
    let server = start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(py)
            .args([script, &server.url, "smollm2"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openai client checks failed:\n{text}");
    assert!(text.contains("ok:"), "{text}");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_in_flight_stream_then_exits() {
    let mut server = start().await;
    let body = serde_json::json!({"prompt": "Once upon a time", "max_tokens": 48,
        "temperature": 0, "stream": true, "stream_options": {"include_usage": true}});
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/completions", server.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let mut buf = String::from_utf8_lossy(&stream.next().await.unwrap().unwrap()).into_owned();
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    while let Some(chunk) = stream.next().await {
        buf += &String::from_utf8_lossy(&chunk.unwrap());
    }
    assert!(
        buf.trim_end().ends_with("data: [DONE]"),
        "stream cut short:\n{buf}"
    );
    assert!(buf.contains("\"completion_tokens\":48"), "{buf}");
    let t0 = Instant::now();
    let code = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "serve-local did not exit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(code.success(), "exit status {code:?}");
}

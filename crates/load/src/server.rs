//! `rapport serve` as a child process: started on a free loopback port, watched for its memory,
//! killed without warning or stopped politely.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Where the `rapport` binary is: `$RAPPORT_BIN` (scripts/env.sh sets it), else next to this
/// program (both are built into the same target directory), else on `PATH`.
pub fn rapport_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("RAPPORT_BIN") {
        return PathBuf::from(bin);
    }
    if let Ok(me) = std::env::current_exe() {
        // target/release/rapport-load, or target/release/deps/<test> for the tests.
        for dir in me.ancestors().skip(1).take(2) {
            let candidate = dir.join("rapport");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from("rapport")
}

/// How to start the server.
#[derive(Debug, Clone)]
pub struct ServeSpec {
    pub bin: PathBuf,
    /// The subcommand and its arguments besides `--listen`: `serve --database-url … --model …`,
    /// or `serve-llm --model …` for a bare model server.
    pub args: Vec<String>,
    /// `127.0.0.1:0` for any free port; a fixed address lets a restarted server keep its URL.
    pub listen: String,
    /// The personas and datasets directory (`RAPPORT_DATASETS`), if not the default.
    pub datasets: Option<PathBuf>,
    /// Append the server's log, with the engine's per-step lines, to this file instead of
    /// printing warnings among this program's progress bars (`benches/engine_steps.py` reads it).
    pub engine_steps: Option<PathBuf>,
}

impl ServeSpec {
    /// `rapport serve` on `database_url` with `args` after it. The simulated people name their
    /// address in `X-Forwarded-For` ([`crate::client::person_address`]) and the server believes
    /// it from loopback, so each person is its own client to the per-address limits, as people
    /// on their own devices are.
    pub fn serve(database_url: &str, args: &[String]) -> ServeSpec {
        let mut all = vec![
            "serve".to_string(),
            "--database-url".into(),
            database_url.into(),
            "--client-ip-header".into(),
            "x-forwarded-for".into(),
        ];
        all.extend(args.iter().cloned());
        ServeSpec {
            bin: rapport_bin(),
            args: all,
            listen: "127.0.0.1:0".into(),
            datasets: None,
            engine_steps: None,
        }
    }

    /// The same server, to be started again on the address it got.
    pub fn at(&self, base: &str) -> ServeSpec {
        let address =
            base.trim_start_matches("http://").split('/').next().unwrap_or(base).to_string();
        ServeSpec { listen: address, ..self.clone() }
    }
}

/// A running `rapport serve`.
pub struct ServerProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl ServerProcess {
    /// Starts the server and waits until it listens (model loading included).
    pub fn start(spec: &ServeSpec) -> anyhow::Result<ServerProcess> {
        let mut command = Command::new(&spec.bin);
        command.args(&spec.args).args(["--listen", &spec.listen]).stdout(Stdio::piped());
        match &spec.engine_steps {
            Some(path) => {
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening {}", path.display()))?;
                // mistral.rs's info lines mark each model load (its warm-up steps are no reply's)
                // and `MISTRALRS_DEBUG=1` adds one line per engine step.
                command.env("MISTRALRS_DEBUG", "1").env("RAPPORT_LOG", "warn,mistralrs_core=info,mistralrs_core::pipeline::gguf=error,rapport=info").stderr(Stdio::from(log));
            }
            None => {
                // Warnings only, minus mistral.rs's "mix of GPU and CPU" notice every CPU start prints.
                command
                    .env(
                        "RAPPORT_LOG",
                        std::env::var("RAPPORT_LOG")
                            .unwrap_or_else(|_| "warn,mistralrs_core::pipeline::gguf=error".into()),
                    )
                    .stderr(Stdio::inherit());
            }
        }
        if let Some(d) = &spec.datasets {
            command.env("RAPPORT_DATASETS", d);
        }
        let mut child =
            command.spawn().with_context(|| format!("starting {}", spec.bin.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // `listening on http://ADDR` (serve) or `listening on http://ADDR/v1 (model …)`.
                if let Some(addr) = line
                    .strip_prefix("listening on ")
                    .and_then(|rest| rest.split_whitespace().next())
                {
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(base) => return Ok(ServerProcess { child, base }),
                Err(_) if Instant::now() > deadline => {
                    let _ = child.kill();
                    bail!("the server did not start listening within 300 s");
                }
                Err(_) => {
                    if let Some(status) = child.try_wait()? {
                        let log = spec
                            .engine_steps
                            .as_ref()
                            .map_or("above".to_string(), |path| format!("in {}", path.display()));
                        bail!("the server exited before listening ({status}); its log is {log}");
                    }
                }
            }
        }
    }

    /// The process id, for RSS and signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown code runs, as in a crash or an out-of-memory kill.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Resident memory of a process in bytes, from /proc (Linux).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// RSS samples of one process over a run: (seconds since start, bytes).
#[derive(Clone, Default)]
pub struct RssTrace {
    samples: Arc<Mutex<Vec<(f64, u64)>>>,
}

impl RssTrace {
    /// Samples `pid` every `every` until the returned handle is dropped or the process ends.
    pub fn sample(pid: u32, every: Duration) -> (RssTrace, tokio::task::JoinHandle<()>) {
        let trace = RssTrace::default();
        let samples = trace.samples.clone();
        let started = Instant::now();
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match rss_bytes(pid) {
                    Some(b) => samples
                        .lock()
                        .expect("not poisoned")
                        .push((started.elapsed().as_secs_f64(), b)),
                    None => return,
                }
            }
        });
        (trace, handle)
    }

    /// The samples so far.
    pub fn samples(&self) -> Vec<(f64, u64)> {
        self.samples.lock().expect("not poisoned").clone()
    }
}

/// A throw-away SQLite database URL in `dir`.
pub fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("rapport.db").display())
}

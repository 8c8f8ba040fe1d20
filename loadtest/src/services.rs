//! tf-router and tf-worker as the load test's modes run them (`chaos`, `compare`): spawned from
//! a binary folder with their environment and log files, SIGKILLed and started again on demand,
//! revived when they exit on their own, killed when dropped.

use std::path::PathBuf;

use anyhow::Context;
use tf_testkit::Service;

/// tf-router and tf-worker as this tool runs them: spawned from `bin_dir` with `env`, each
/// with its own log file in `out`, killed when dropped (through [`tf_testkit::Service`], the
/// repository's one process wrapper).
pub(crate) struct Services {
    bin_dir: PathBuf,
    out: PathBuf,
    /// Starts the log files' names, so runs sharing `out` keep theirs apart.
    log_prefix: String,
    env: Vec<(String, String)>,
    router: Option<Service>,
    worker: Option<Service>,
    spawned: u32,
    /// Services that exited on their own (say, a router fenced after a broker restart) and
    /// were started again, as a supervisor (systemd, Kubernetes) would: `(name, status)`.
    pub(crate) revived: Vec<(&'static str, String)>,
}

impl Services {
    pub(crate) fn new(bin_dir: PathBuf, out: PathBuf, log_prefix: String, env: Vec<(String, String)>) -> Services {
        Services { bin_dir, out, log_prefix, env, router: None, worker: None, spawned: 0, revived: Vec::new() }
    }

    fn spawn(&mut self, name: &str) -> anyhow::Result<Service> {
        self.spawned += 1;
        let log = self.out.join(format!("{}{name}-{}.log", self.log_prefix, self.spawned));
        let bin = self.bin_dir.join(name);
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Service::start_logged(&bin, name, &log, &env).with_context(|| format!("starting {} (log {})", bin.display(), log.display()))
    }

    pub(crate) fn restart_router(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.router.take() {
            c.kill();
        }
        self.router = Some(self.spawn("tf-router")?);
        Ok(())
    }

    pub(crate) fn restart_worker(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.worker.take() {
            c.kill();
        }
        self.worker = Some(self.spawn("tf-worker")?);
        Ok(())
    }

    /// The router's exit status, once it exited.
    pub(crate) fn router_exited(&mut self) -> Option<std::process::ExitStatus> {
        self.router.as_mut().and_then(Service::exited)
    }

    /// Starts again whatever exited on its own.
    pub(crate) fn revive(&mut self) -> anyhow::Result<()> {
        for name in ["tf-router", "tf-worker"] {
            let slot = if name == "tf-router" { &mut self.router } else { &mut self.worker };
            let Some(status) = slot.as_mut().and_then(Service::exited) else { continue };
            *slot = None;
            println!("  {name} exited on its own ({status}); restarting it as a supervisor would");
            self.revived.push((name, status.to_string()));
            let child = self.spawn(name)?;
            if name == "tf-router" { self.router = Some(child) } else { self.worker = Some(child) }
        }
        Ok(())
    }

    pub(crate) fn stop(&mut self) {
        for mut c in [self.router.take(), self.worker.take()].into_iter().flatten() {
            c.kill();
        }
    }
}

pub(crate) fn default_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    // Under `cargo test` the binary sits in target/<profile>/deps.
    if dir.ends_with("deps") { dir.parent().map(PathBuf::from).unwrap_or(dir) } else { dir }
}

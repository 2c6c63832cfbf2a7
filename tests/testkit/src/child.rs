//! Runs one test of the current test binary in a child process, to kill it for real.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// A child process running a single test of the current test binary.
///
/// The test decides what to do from the environment given to [`TestChild::spawn`] (it should
/// return at once when that environment is absent, so that normal test runs skip it), and
/// reports progress on stdout, one line at a time. Dropping the handle SIGKILLs the child.
#[derive(Debug)]
pub struct TestChild {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl TestChild {
    /// Starts `current_exe() <test_name> --exact --nocapture` with `env` added.
    pub fn spawn(test_name: &str, env: &[(&str, &str)]) -> Result<TestChild> {
        let exe = std::env::current_exe().context("find the current test binary")?;
        let mut command = std::process::Command::new(&exe);
        command
            .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        crate::etcd::kill_with_parent(&mut command);
        let mut command = Command::from(command);
        command.kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("run {} {test_name}", exe.display()))?;
        let stdout = child.stdout.take().context("child stdout is not piped")?;
        Ok(TestChild {
            child,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// The next line the child printed, `None` at end of output. Fails after `timeout`.
    pub async fn next_line(&mut self, timeout: Duration) -> Result<Option<String>> {
        match tokio::time::timeout(timeout, self.lines.next_line()).await {
            Ok(line) => line.context("read the child's output"),
            Err(_) => bail!("the child printed nothing for {timeout:?}"),
        }
    }

    /// SIGKILLs the child and reaps it.
    pub async fn kill(&mut self) -> Result<()> {
        self.child.kill().await.context("kill the child process")
    }

    /// The child's process id, if it is still running.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }
}

//! A function a benchmark drives while it runs: lines to its stdin, lines
//! from its stdout.

use std::{
    io::{BufRead as _, BufReader, Lines, Write as _},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use anyhow::{Context as _, bail};

/// A running function: its stdin and its stdout's lines.
pub struct Function {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Function {
    pub fn spawn(mut cmd: Command) -> anyhow::Result<Self> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().context("starting a function")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("a function's stdout")?;
        Ok(Self {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// The next line (an error once the function exited).
    pub fn line(&mut self) -> anyhow::Result<String> {
        match self.lines.next() {
            Some(line) => Ok(line?),
            None => bail!("a function exited: {:?}", self.child.wait()?),
        }
    }

    /// The next line, split into words; the first must be `word` and the
    /// second `k`.
    pub fn expect(&mut self, word: &str, k: usize) -> anyhow::Result<Vec<u64>> {
        let line = self.line()?;
        let mut words = line.split_whitespace();
        if words.next() != Some(word) || words.next() != Some(&k.to_string()) {
            bail!("expected `{word} {k} ...` from a function, got `{line}`");
        }
        words
            .map(|w| w.parse().with_context(|| format!("reading `{line}`")))
            .collect()
    }

    pub fn tell(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("a function's stdin")?;
        writeln!(stdin, "{line}")?;
        stdin.flush().context("telling a function")
    }

    pub fn wait(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        let status = self.child.wait()?;
        anyhow::ensure!(status.success(), "a function failed: {status}");
        Ok(())
    }
}

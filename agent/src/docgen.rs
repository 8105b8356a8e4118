//! Shell completions and man pages generated from a binary's clap
//! definition (`ferry gen-completions`, `ferry gen-man`, and the same
//! subcommands of `ferry-agent`): what the Debian package installs.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Shells completions can be generated for.
pub use clap_complete::Shell;

/// Writes the completion script of `cmd` for `shell` to `out`.
pub fn write_completions(mut cmd: clap::Command, shell: Shell, out: &mut dyn std::io::Write) {
    let name = cmd.get_name().to_owned();
    clap_complete::generate(shell, &mut cmd, name, out);
}

/// Writes `NAME.1` for `cmd` and `NAME-SUB.1` for each of its visible
/// subcommands into `dir` (created if missing); returns the files written.
pub fn write_man_pages(cmd: clap::Command, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = cmd;
    cmd.build();
    let mut written = Vec::new();
    let mut page = |cmd: &clap::Command, name: &str| -> anyhow::Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd.clone().name(name.to_owned()))
            .render(&mut buf)
            .with_context(|| format!("rendering the man page {name}"))?;
        std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
        Ok(())
    };
    let name = cmd.get_name().to_owned();
    page(&cmd, &name)?;
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        page(sub, &format!("{name}-{}", sub.get_name()))?;
    }
    Ok(written)
}

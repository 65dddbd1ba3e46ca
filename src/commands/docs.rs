//! The command line's own documentation: shell completions (`runvm
//! completion SHELL`) and man pages (the hidden `runvm __man DIR`, which
//! `make install` runs), both generated from the clap definitions.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::Args;
use clap_complete::Shell;

/// `runvm completion SHELL`
#[derive(Args, Debug)]
pub struct CompletionCmd {
    shell: Shell,
}

/// `runvm __man DIR`
#[derive(Args, Debug)]
pub struct ManCmd {
    dir: PathBuf,
}

pub fn completion(args: CompletionCmd) -> Result<u8> {
    let mut cmd = crate::command();
    clap_complete::generate(args.shell, &mut cmd, "runvm", &mut std::io::stdout());
    Ok(0)
}

/// Write runvm.8 and one page per visible verb (runvm-create.8,
/// runvm-factory-init.8...) into the directory.
pub fn man_pages(args: ManCmd) -> Result<u8> {
    let mut cmd = crate::command().disable_help_subcommand(true);
    cmd.build();
    write_pages(&cmd, &args.dir)?;
    Ok(0)
}

fn write_pages(cmd: &clap::Command, dir: &Path) -> Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir)?;
    }
    let man = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .source(format!("runvm {}", env!("CARGO_PKG_VERSION")))
        .manual("runvm");
    let path = dir.join(man.get_filename());
    let write = || -> std::io::Result<()> {
        let mut out = BufWriter::new(File::create(&path)?);
        man.render(&mut out)?;
        out.flush()
    };
    write().with_context(|| format!("write {}", path.display()))
}

//! Generates the man pages and shell completions that the .deb ships, from the clap
//! definitions the binaries parse (`vmwarden::cli`).
//!
//! `cargo run --example gen_assets -- OUT_DIR` writes:
//! - `OUT_DIR/man/vmwarden.1` and `OUT_DIR/man/vmwardend.8`, one page per command plus one per
//!   subcommand of the client (`vmwarden-vm.1`, `vmwarden-vm-start.1`, ...), referenced from
//!   the main page;
//! - `OUT_DIR/man/vmwarden.toml.5`, the configuration;
//! - `OUT_DIR/completions/{bash,zsh,fish}/` for both binaries (the client's dynamic).
//!
//! `make deb` (packaging/build-deb.sh) runs it before `cargo deb`.

use clap::CommandFactory;
use clap_complete::Shell;
use std::path::{Path, PathBuf};
use vmwarden::cli::{client::Cli, daemon_args::Args};

fn main() -> std::io::Result<()> {
    let out = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .unwrap_or_else(|| "target/assets".into()),
    );
    let man = out.join("man");
    std::fs::create_dir_all(&man)?;
    write_man(&man, Cli::command(), "1")?;
    write_man(&man, Args::command(), "8")?;
    std::fs::write(
        man.join("vmwarden.toml.5"),
        vmwarden::cli::config_man::page(),
    )?;
    for (bin, mut cmd) in [("vmwarden", Cli::command()), ("vmwardend", Args::command())] {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let dir = out.join("completions").join(shell.to_string());
            std::fs::create_dir_all(&dir)?;
            let mut buf = Vec::new();
            if bin == "vmwarden" {
                // The client completes dynamically (VM and drive names from the daemon): the
                // script calls /usr/bin/vmwarden back, as `vmwarden completion` prints it.
                use clap_complete::env::EnvCompleter;
                let (name, path) = ("vmwarden", "/usr/bin/vmwarden");
                match shell {
                    Shell::Bash => clap_complete::env::Bash
                        .write_registration("COMPLETE", name, name, path, &mut buf),
                    Shell::Zsh => clap_complete::env::Zsh
                        .write_registration("COMPLETE", name, name, path, &mut buf),
                    _ => clap_complete::env::Fish
                        .write_registration("COMPLETE", name, name, path, &mut buf),
                }?;
            } else {
                clap_complete::generate(shell, &mut cmd, bin, &mut buf);
            }
            std::fs::write(dir.join(completion_name(shell, bin)), buf)?;
        }
    }
    println!("assets written to {}", out.display());
    Ok(())
}

/// File names the shells look for in their vendor directories.
fn completion_name(shell: Shell, bin: &str) -> String {
    match shell {
        Shell::Zsh => format!("_{bin}"),
        Shell::Fish => format!("{bin}.fish"),
        _ => bin.to_owned(),
    }
}

/// Writes the page of `cmd` and, recursively, one page per subcommand (`parent-sub.N`, the
/// names the SUBCOMMANDS section of the parent page refers to).
fn write_man(dir: &Path, cmd: clap::Command, section: &str) -> std::io::Result<()> {
    fn page(dir: &Path, cmd: clap::Command, section: &str) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
            page(dir, sub, section)?;
        }
        clap_mangen::Man::new(cmd)
            .section(section)
            .manual("vmwarden")
            .source(format!("vmwarden {}", env!("CARGO_PKG_VERSION")))
            .generate_to(dir)?;
        Ok(())
    }
    let mut cmd = cmd.disable_help_subcommand(true);
    // Building sets the display names ("vmwarden-vm-start") the file names come from.
    cmd.build();
    page(dir, cmd, section)
}

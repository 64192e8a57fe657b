//! Drive images on disk: creating and removing LUKS-encrypted qcow2 files with `qemu-img`,
//! and writing into their decrypted content with `qemu-io` (tests use it to plant a boot
//! sector).
//!
//! libvirt's storage-volume XML cannot set the LUKS iter-time, so images are made by running
//! QEMU's tools directly. The passphrase reaches them on the child's stdin as a QEMU `secret`
//! object read from `/dev/stdin`: never in argv (visible in /proc to every user), never in a
//! file that could outlive the call.

use super::HypervisorError;
use crate::model::SecretBytes;
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// PBKDF iteration time in milliseconds. Our passphrases are 256-bit random, so key
/// stretching buys nothing and would only slow every launch (DESIGN 1, "Project keys").
const ITER_TIME_MS: u32 = 10;

/// Longest tool error text kept in an error message.
const MAX_STDERR: usize = 400;

fn image_error(msg: String) -> HypervisorError {
    HypervisorError::Image(msg)
}

fn path_arg(path: &Path) -> Result<&str, HypervisorError> {
    // QEMU reads "proto:rest" in a plain filename as a protocol (nbd:, json:, ...); an
    // absolute path has no colon before its first slash, so it is always a plain file.
    if !path.is_absolute() {
        return Err(image_error(format!(
            "{} is not an absolute path",
            path.display()
        )));
    }
    path.to_str()
        .ok_or_else(|| image_error(format!("{} is not valid UTF-8", path.display())))
}

/// Runs `cmd` with `secret` on its stdin; returns the tool's stderr as the error on failure.
fn run_with_secret(mut cmd: Command, tool: &str, secret: &SecretBytes) -> Result<(), String> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("LC_ALL", "C");
    let mut child = cmd.spawn().map_err(|e| format!("Cannot run {tool}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A passphrase is far smaller than a pipe buffer, so this cannot block on a child
        // that has not started reading. A write error means the child exited early; its
        // exit status and stderr tell why.
        let _ = stdin.write_all(secret.expose());
        // Dropping stdin closes the pipe: QEMU reads the secret file up to EOF.
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("Waiting for {tool} failed: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(tool_error(tool, &out.stderr, secret))
}

fn tool_error(tool: &str, stderr: &[u8], secret: &SecretBytes) -> String {
    let mut text = String::from_utf8_lossy(stderr).trim().to_owned();
    // QEMU never echoes a secret, but an error message is the last place one may appear.
    let exposed = String::from_utf8_lossy(secret.expose());
    if !exposed.is_empty() && text.contains(exposed.as_ref()) {
        text = text.replace(exposed.as_ref(), "[REDACTED]");
    }
    if text.len() > MAX_STDERR {
        let mut cut = MAX_STDERR;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    if text.is_empty() {
        format!("{tool} failed")
    } else {
        format!("{tool} failed: {text}")
    }
}

/// Creates a new LUKS-encrypted qcow2 image of `size_mib` MiB at `path`, mode 0600.
///
/// The file must not exist yet; on failure nothing is left behind. The LUKS passphrase is
/// exactly the bytes of `passphrase`.
pub fn create_luks_qcow2(
    path: &Path,
    size_mib: u64,
    passphrase: &SecretBytes,
) -> Result<(), HypervisorError> {
    let target = path_arg(path)?;
    if size_mib == 0 {
        return Err(image_error("Image size must be at least 1 MiB".to_owned()));
    }
    if passphrase.expose().is_empty() {
        return Err(image_error("Empty LUKS passphrase".to_owned()));
    }
    // qemu-img would create the file with the process umask (usually 0644) and overwrite an
    // existing one; creating it here first, exclusively and 0600, fixes the mode for good
    // (qemu-img keeps the mode of a file it truncates) and never clobbers another image.
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| space_or(e, format!("Cannot create {}", path.display())))?;

    let mut cmd = Command::new("qemu-img");
    cmd.args([
        "create",
        "-q",
        "-f",
        "qcow2",
        "--object",
        "secret,id=sec0,file=/dev/stdin",
        "-o",
        &format!("encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time={ITER_TIME_MS}"),
        target,
        &format!("{size_mib}M"),
    ]);
    match run_with_secret(cmd, "qemu-img", passphrase) {
        Ok(()) => Ok(()),
        Err(msg) => {
            let _ = fs::remove_file(path);
            if msg.contains("No space left on device") {
                Err(HypervisorError::NoSpace(msg))
            } else {
                Err(image_error(msg))
            }
        }
    }
}

fn space_or(e: std::io::Error, what: String) -> HypervisorError {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        HypervisorError::NoSpace(format!("{what}: {e}"))
    } else {
        image_error(format!("{what}: {e}"))
    }
}

/// Removes an image file; a file that is already gone counts as removed.
pub fn remove_image(path: &Path) -> Result<(), HypervisorError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(image_error(format!(
            "Cannot remove {}: {e}",
            path.display()
        ))),
    }
}

/// Writes `data` at offset 0 of the decrypted content of the LUKS qcow2 image at `path`.
///
/// Meant for tests (a boot sector in an encrypted drive) and tools; the image must not be in
/// use by a running domain. `data` itself is not secret: it passes through a 0600 temporary
/// file, removed before returning, because stdin already carries the passphrase.
pub fn write_raw_via_luks(
    path: &Path,
    passphrase: &SecretBytes,
    data: &[u8],
) -> Result<(), HypervisorError> {
    let image = path_arg(path)?;
    if data.is_empty() {
        return Ok(());
    }
    let tmp = std::env::temp_dir().join(format!("vmwarden-write-{}", uuid::Uuid::new_v4()));
    let tmp_str = tmp
        .to_str()
        .ok_or_else(|| image_error("Temporary directory path is not valid UTF-8".to_owned()))?
        .to_owned();
    // Option values are comma-separated in --image-opts; QEMU escapes a comma by doubling.
    let image_opt = image.replace(',', ",,");
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| format!("Cannot create a temporary file: {e}"))?;
        f.write_all(data)
            .map_err(|e| format!("Cannot write a temporary file: {e}"))?;
        drop(f);
        let mut cmd = Command::new("qemu-io");
        cmd.args([
            "--object",
            "secret,id=sec0,file=/dev/stdin",
            "--image-opts",
            &format!("driver=qcow2,file.filename={image_opt},encrypt.key-secret=sec0"),
            "-c",
            &format!("write -q -s {tmp_str} 0 {}", data.len()),
        ]);
        run_with_secret(cmd, "qemu-io", passphrase)
    })();
    let _ = fs::remove_file(&tmp);
    result.map_err(image_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_and_empty_sizes_are_refused() {
        let p = SecretBytes::new(b"pw".to_vec());
        assert!(create_luks_qcow2(Path::new("rel.qcow2"), 1, &p).is_err());
        let dir = tempfile::tempdir().unwrap();
        let zero = dir.path().join("x.qcow2");
        let e = create_luks_qcow2(&zero, 0, &p).unwrap_err();
        assert!(!zero.exists(), "a refused size must not leave a file: {e}");
        assert!(write_raw_via_luks(Path::new("nbd:host:1"), &p, b"x").is_err());
    }

    #[test]
    fn tool_errors_never_carry_the_secret() {
        let p = SecretBytes::new(b"hunter2".to_vec());
        let msg = tool_error("qemu-img", b"bad secret hunter2 here\n", &p);
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(msg.starts_with("qemu-img failed: "));
        let long = tool_error("qemu-io", "é".repeat(1000).as_bytes(), &p);
        assert!(long.len() < MAX_STDERR + 40);
        assert_eq!(tool_error("qemu-io", b"", &p), "qemu-io failed");
    }

    #[test]
    fn remove_image_is_idempotent() {
        assert!(remove_image(Path::new("/nonexistent-dir/x.qcow2")).is_ok());
    }
}

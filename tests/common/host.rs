//! The host as the tests see it: libvirt (virsh), QEMU, boot sectors written through LUKS,
//! image files and their rows.

use super::{Daemon, Shares};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A boot sector that prints `marker` on COM1 and halts (or spins forever with `spin`).
pub fn boot_sector(marker: &str, spin: bool) -> Vec<u8> {
    let mut code: Vec<u8> = vec![
        0xFA, // cli
        0x31, 0xC0, // xor ax, ax
        0x8E, 0xD8, // mov ds, ax
        0xBE, 0x16, 0x7C, // mov si, 0x7c16 (msg)
        0xBA, 0xF8, 0x03, // mov dx, 0x3f8
        0xAC, // loop: lodsb
        0x84, 0xC0, // test al, al
        0x74, 0x03, // jz done
        0xEE, // out dx, al
        0xEB, 0xF8, // jmp loop
    ];
    if spin {
        code.extend_from_slice(&[0xEB, 0xFE, 0x90]); // done: jmp $ (busy), pad
    } else {
        code.extend_from_slice(&[0xF4, 0xEB, 0xFD]); // done: hlt; jmp done
    }
    assert_eq!(code.len(), 22);
    code.extend_from_slice(marker.as_bytes());
    code.push(0);
    code.resize(510, 0);
    code.extend_from_slice(&[0x55, 0xAA]);
    code
}

/// Writes a boot sector into an encrypted drive as the key holders can: rebuild K from the
/// shares, unwrap the drive's passphrase from the database, write through LUKS.
pub fn write_boot_sector(d: &Daemon, s: &Shares, project: &str, drive: &str, sector: &[u8]) {
    let k = vmwarden::keys::combine(s.admin.as_bytes(), s.member.as_bytes()).unwrap();
    let id: vmwarden::model::DriveId = drive.parse().unwrap();
    let row = d.with_store(|st| st.drive(id).unwrap().expect("the drive's row"));
    let (wrapped, storage) = (row.wrapped, row.drive.storage.to_string());
    let p = vmwarden::model::ProjectName::parse(project).unwrap();
    let pass = vmwarden::keys::unwrap(&k, &p, drive, &wrapped).unwrap();
    let path = d.state().join("drives").join(format!("{storage}.qcow2"));
    vmwarden::hypervisor::image::write_raw_via_luks(&path, &pass, sector).unwrap();
}

/// The storage id (image file name) of a drive, which no API answer shows.
pub fn storage_of(d: &Daemon, drive: &str) -> String {
    let id: vmwarden::model::DriveId = drive.parse().unwrap();
    d.with_store(|st| st.drive(id).unwrap().expect("the drive's row"))
        .drive
        .storage
        .to_string()
}

pub fn serial_log(d: &Daemon, vm: &str) -> PathBuf {
    d.state().join("logs").join(format!("{vm}.serial.log"))
}

pub fn wait_for_file_containing(path: &Path, needle: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if std::fs::read(path)
            .map(|b| String::from_utf8_lossy(&b).contains(needle))
            .unwrap_or(false)
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

pub fn virsh(args: &[&str]) -> String {
    let out = Command::new("virsh")
        .arg("-c")
        .arg("qemu:///system")
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

pub fn domain_running(id: &str) -> bool {
    virsh(&["list", "--name"]).lines().any(|l| l.trim() == id)
}

/// libvirt secrets vmwarden defined for these drives (tests run in parallel, so each looks
/// only at its own drives).
pub fn our_secrets(drives: &[&str]) -> Vec<String> {
    let list = virsh(&["secret-list"]);
    list.lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .filter(|uuid| {
            let xml = virsh(&["secret-dumpxml", uuid]);
            drives
                .iter()
                .any(|d| xml.contains(&format!("vmwarden drive {d}")))
        })
        .map(str::to_owned)
        .collect()
}

pub fn qemu_pid(vm: &str) -> i32 {
    std::fs::read_to_string(format!("/run/libvirt/qemu/{vm}.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Image files in a daemon's drives folder.
pub fn image_files(d: &Daemon) -> Vec<String> {
    std::fs::read_dir(d.state().join("drives"))
        .map(|it| {
            it.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Storage ids of every drive row (read straight from the database file).
pub fn storage_rows(d: &Daemon) -> Vec<String> {
    d.sql("SELECT storage FROM drives", &[])
        .iter()
        .map(|r| format!("{}.qcow2", r.text(0).unwrap()))
        .collect()
}

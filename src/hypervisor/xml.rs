//! libvirt XML documents built and read by vmwarden: domain, disk device and secret XML out,
//! live domain XML (disks) and secret XML (description) in.
//!
//! Everything is written with quick-xml's writer, which escapes every text node and
//! attribute value, so no value, even one that validation should have stopped, can change the
//! structure of a document. Nothing here talks to libvirt.

use super::{DiskSpec, DomainSpec, DomainType, HypervisorError};
use crate::model::DriveId;
use quick_xml::events::{BytesStart, BytesText, Event};
use quick_xml::{Reader, Writer};
use std::path::Path;
use uuid::Uuid;

/// Namespace of the vmwarden `<metadata>` element; its presence marks a domain as ours.
pub const METADATA_NS: &str = "https://vmwarden.invalid/xmlns/vm/1";

/// Prefix bound to [`METADATA_NS`] in the domain XML.
pub const METADATA_PREFIX: &str = "vmwarden";

/// Start of the description of every secret vmwarden defines; `our_secrets` recognises
/// ours by it, since secrets carry no other owner mark.
pub const SECRET_DESCRIPTION_PREFIX: &str = "vmwarden drive";

/// virtio-blk serials hold at most 20 bytes (VIRTIO_BLK_ID_BYTES); QEMU truncates longer
/// ones, so we truncate first and match on exactly what the guest and the live XML show.
const SERIAL_LEN: usize = 20;

type Xw = Writer<Vec<u8>>;

fn xml_error(what: &str, e: impl std::fmt::Display) -> HypervisorError {
    HypervisorError::Failed(format!("{what}: {e}"))
}

fn finish(w: Xw, what: &str) -> Result<String, HypervisorError> {
    String::from_utf8(w.into_inner()).map_err(|e| xml_error(what, e))
}

fn new_writer() -> Xw {
    // Indented output costs nothing and keeps libvirt's error messages and our debug logs
    // readable.
    Writer::new_with_indent(Vec::new(), b' ', 2)
}

fn text_element(w: &mut Xw, name: &str, text: &str) -> quick_xml::Result<()> {
    w.create_element(name)
        .write_text_content(BytesText::new(text))?;
    Ok(())
}

fn path_str<'a>(path: &'a Path, what: &str) -> Result<&'a str, HypervisorError> {
    // A relative path would be resolved against libvirtd's working directory, not ours.
    if !path.is_absolute() {
        return Err(HypervisorError::Failed(format!(
            "{what} {} is not an absolute path",
            path.display()
        )));
    }
    path.to_str().ok_or_else(|| {
        HypervisorError::Failed(format!("{what} {} is not valid UTF-8", path.display()))
    })
}

/// The disk serial the guest sees for `drive`: 20 hex digits of a hash of its id. Users of a
/// VM may log into the guest, and to a user the drive id does not exist; the hash still lets
/// vmwarden find the disk of a drive in the live XML.
pub fn disk_serial(drive: DriveId) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"vmwarden disk serial v1\0")
        .chain_update(drive.to_string().as_bytes())
        .finalize();
    let mut s: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    s.truncate(SERIAL_LEN);
    s
}

/// The disk target name at `index`: `vda` ... `vdz`, `vdaa`, ... (libvirt's own scheme).
pub fn disk_target(index: usize) -> String {
    let mut suffix = Vec::new();
    let mut n = index + 1;
    while n > 0 {
        n -= 1;
        suffix.push(b'a' + (n % 26) as u8);
        n /= 26;
    }
    suffix.reverse();
    format!("vd{}", String::from_utf8_lossy(&suffix))
}

fn write_disk(
    w: &mut Xw,
    drive: DriveId,
    path: &str,
    target: &str,
    secret: Uuid,
) -> quick_xml::Result<()> {
    let secret = secret.hyphenated().to_string();
    let serial = disk_serial(drive);
    w.create_element("disk")
        .with_attributes([("type", "file"), ("device", "disk")])
        .write_inner_content(|w| {
            w.create_element("driver")
                .with_attributes([("name", "qemu"), ("type", "qcow2")])
                .write_empty()?;
            w.create_element("source")
                .with_attribute(("file", path))
                .write_inner_content(|w| {
                    w.create_element("encryption")
                        .with_attribute(("format", "luks"))
                        .write_inner_content(|w| {
                            w.create_element("secret")
                                .with_attributes([
                                    ("type", "passphrase"),
                                    ("uuid", secret.as_str()),
                                ])
                                .write_empty()?;
                            Ok::<_, quick_xml::Error>(())
                        })?;
                    Ok::<_, quick_xml::Error>(())
                })?;
            w.create_element("target")
                .with_attributes([("dev", target), ("bus", "virtio")])
                .write_empty()?;
            text_element(w, "serial", &serial)
        })?;
    Ok(())
}

/// Domain XML for `spec`. `secrets[i]` is the UUID of the libvirt secret holding the
/// passphrase of `spec.disks[i]`; `domain_type` must already be resolved (not `Auto`).
pub fn domain_xml(
    spec: &DomainSpec,
    domain_type: DomainType,
    secrets: &[Uuid],
) -> Result<String, HypervisorError> {
    const WHAT: &str = "Building the domain XML failed";
    let kind = match domain_type {
        DomainType::Kvm => "kvm",
        DomainType::Qemu => "qemu",
        DomainType::Auto => {
            return Err(HypervisorError::Failed(format!(
                "{WHAT}: domain type auto is not resolved"
            )))
        }
    };
    if secrets.len() != spec.disks.len() {
        return Err(HypervisorError::Failed(format!(
            "{WHAT}: {} disks but {} secrets",
            spec.disks.len(),
            secrets.len()
        )));
    }
    let mut disks = Vec::with_capacity(spec.disks.len());
    for (i, d) in spec.disks.iter().enumerate() {
        disks.push((d.drive, path_str(&d.path, "Drive image")?, disk_target(i)));
    }
    let serial_log = path_str(&spec.serial_log, "Serial log")?;
    let id = spec.id.to_string();
    let memory = spec.memory_mib.to_string();
    let vcpus = spec.vcpus.to_string();
    let ns_attr = format!("xmlns:{METADATA_PREFIX}");
    let el = |local: &str| format!("{METADATA_PREFIX}:{local}");

    let mut w = new_writer();
    w.create_element("domain")
        .with_attribute(("type", kind))
        .write_inner_content(|w| {
            text_element(w, "name", &id)?;
            text_element(w, "uuid", &id)?;
            w.create_element("metadata").write_inner_content(|w| {
                w.create_element(el("vm").as_str())
                    .with_attribute((ns_attr.as_str(), METADATA_NS))
                    .write_inner_content(|w| {
                        text_element(w, &el("name"), spec.name.as_str())?;
                        text_element(w, &el("project"), spec.project.as_str())?;
                        text_element(w, &el("host"), &spec.host)
                    })?;
                Ok::<_, quick_xml::Error>(())
            })?;
            w.create_element("memory")
                .with_attribute(("unit", "MiB"))
                .write_text_content(BytesText::new(&memory))?;
            text_element(w, "vcpu", &vcpus)?;
            w.create_element("os").write_inner_content(|w| {
                w.create_element("type")
                    .with_attributes([("arch", "x86_64"), ("machine", "pc")])
                    .write_text_content(BytesText::new("hvm"))?;
                w.create_element("boot")
                    .with_attribute(("dev", "hd"))
                    .write_empty()?;
                Ok::<_, quick_xml::Error>(())
            })?;
            // Without ACPI, pci.0 refuses hot-plug and an ACPI shutdown request does nothing.
            w.create_element("features").write_inner_content(|w| {
                w.create_element("acpi").write_empty()?;
                w.create_element("apic").write_empty()?;
                Ok::<_, quick_xml::Error>(())
            })?;
            // A transient domain that powers off or crashes must go away, so that the
            // service sees it stopped rather than lingering.
            text_element(w, "on_poweroff", "destroy")?;
            text_element(w, "on_crash", "destroy")?;
            w.create_element("devices").write_inner_content(|w| {
                for (i, (drive, path, target)) in disks.iter().enumerate() {
                    write_disk(w, *drive, path, target, secrets[i])?;
                }
                // libvirt adds a USB controller by default; nothing uses it.
                w.create_element("controller")
                    .with_attributes([("type", "usb"), ("model", "none")])
                    .write_empty()?;
                w.create_element("serial")
                    .with_attribute(("type", "file"))
                    .write_inner_content(|w| {
                        w.create_element("source")
                            .with_attribute(("path", serial_log))
                            .write_empty()?;
                        w.create_element("target")
                            .with_attribute(("port", "0"))
                            .write_empty()?;
                        Ok::<_, quick_xml::Error>(())
                    })?;
                w.create_element("console")
                    .with_attribute(("type", "file"))
                    .write_inner_content(|w| {
                        w.create_element("source")
                            .with_attribute(("path", serial_log))
                            .write_empty()?;
                        w.create_element("target")
                            .with_attributes([("type", "serial"), ("port", "0")])
                            .write_empty()?;
                        Ok::<_, quick_xml::Error>(())
                    })?;
                w.create_element("memballoon")
                    .with_attribute(("model", "none"))
                    .write_empty()?;
                Ok::<_, quick_xml::Error>(())
            })?;
            Ok::<_, quick_xml::Error>(())
        })
        .map_err(|e| xml_error(WHAT, e))?;
    finish(w, WHAT)
}

/// Device XML that hot-attaches `disk` as `target`, its passphrase in secret `secret`.
pub fn disk_xml(disk: &DiskSpec, target: &str, secret: Uuid) -> Result<String, HypervisorError> {
    const WHAT: &str = "Building the disk XML failed";
    let path = path_str(&disk.path, "Drive image")?;
    let mut w = new_writer();
    write_disk(&mut w, disk.drive, path, target, secret).map_err(|e| xml_error(WHAT, e))?;
    finish(w, WHAT)
}

/// Secret XML for the passphrase of `drive`: ephemeral (never written to disk by libvirt)
/// and private (its value cannot be read back through the API).
pub fn secret_xml(secret: Uuid, drive: DriveId) -> Result<String, HypervisorError> {
    const WHAT: &str = "Building the secret XML failed";
    let uuid = secret.hyphenated().to_string();
    let description = format!("{SECRET_DESCRIPTION_PREFIX} {drive}");
    let mut w = new_writer();
    w.create_element("secret")
        .with_attributes([("ephemeral", "yes"), ("private", "yes")])
        .write_inner_content(|w| {
            text_element(w, "uuid", &uuid)?;
            text_element(w, "description", &description)
        })
        .map_err(|e| xml_error(WHAT, e))?;
    finish(w, WHAT)
}

/// A disk of a live domain, as far as attach and detach need to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveDisk {
    /// `<target dev>`, e.g. `vdb`.
    pub target: String,
    /// `<target bus>`, e.g. `virtio`.
    pub bus: Option<String>,
    /// `<serial>`; ours carry [`disk_serial`] of the drive.
    pub serial: Option<String>,
    /// `<source file>` of the top image.
    pub source: Option<String>,
    /// `<alias name>` QEMU knows the device by.
    pub alias: Option<String>,
}

fn attr(e: &BytesStart<'_>, name: &str) -> Result<Option<String>, quick_xml::Error> {
    match e.try_get_attribute(name)? {
        Some(a) => Ok(Some(a.unescape_value()?.into_owned())),
        None => Ok(None),
    }
}

/// The `<disk>` devices of a domain XML (any `device` kind, floppies and CD-ROMs included,
/// since they occupy target names too).
pub fn live_disks(domain_xml: &str) -> Result<Vec<LiveDisk>, HypervisorError> {
    parse_disks(domain_xml).map_err(|e| xml_error("Reading the domain XML failed", e))
}

fn parse_disks(domain_xml: &str) -> Result<Vec<LiveDisk>, quick_xml::Error> {
    // Path of element names from the root; only children of domain/devices/disk count, since
    // a disk's <backingStore> holds <source> elements of its own.
    let mut reader = Reader::from_str(domain_xml);
    let mut stack: Vec<Vec<u8>> = Vec::new();
    let mut disks = Vec::new();
    let mut current: Option<LiveDisk> = None;
    let mut in_serial = false;
    let at_disk = |stack: &[Vec<u8>]| {
        stack.len() == 3 && stack[0] == b"domain" && stack[1] == b"devices" && stack[2] == b"disk"
    };
    loop {
        let ev = reader.read_event()?;
        match &ev {
            Event::Start(e) | Event::Empty(e) => {
                let name = e.name().as_ref().to_vec();
                if stack.len() == 2
                    && stack[0] == b"domain"
                    && stack[1] == b"devices"
                    && name == b"disk"
                {
                    current = Some(LiveDisk {
                        target: String::new(),
                        bus: None,
                        serial: None,
                        source: None,
                        alias: None,
                    });
                } else if at_disk(&stack) {
                    if let Some(d) = current.as_mut() {
                        match name.as_slice() {
                            b"target" => {
                                d.target = attr(e, "dev")?.unwrap_or_default();
                                d.bus = attr(e, "bus")?;
                            }
                            b"source" => d.source = attr(e, "file")?,
                            b"alias" => d.alias = attr(e, "name")?,
                            b"serial" => in_serial = matches!(ev, Event::Start(_)),
                            _ => {}
                        }
                    }
                }
                if matches!(ev, Event::Start(_)) {
                    stack.push(name);
                } else if name == b"disk" && stack.len() == 2 {
                    // An empty <disk/> has nothing to record.
                    current = None;
                }
            }
            Event::Text(t) if in_serial => {
                if let Some(d) = current.as_mut() {
                    d.serial = Some(t.unescape()?.trim().to_owned());
                }
            }
            Event::End(_) => {
                in_serial = false;
                let name = stack.pop().unwrap_or_default();
                if name == b"disk" && stack.len() == 2 {
                    if let Some(d) = current.take() {
                        disks.push(d);
                    }
                }
            }
            Event::Eof if stack.is_empty() => break,
            Event::Eof => {
                return Err(quick_xml::Error::IllFormed(
                    quick_xml::errors::IllFormedError::MissingEndTag(
                        String::from_utf8_lossy(stack.last().map_or(&[][..], |v| v)).into_owned(),
                    ),
                ))
            }
            _ => {}
        }
    }
    Ok(disks)
}

/// The first `vdX` target that no disk in `disks` uses.
pub fn first_free_target(disks: &[LiveDisk]) -> String {
    (0..)
        .map(disk_target)
        .find(|t| !disks.iter().any(|d| &d.target == t))
        .unwrap_or_default()
}

/// The disk of `drive` among `disks`, recognised by its serial.
pub fn disk_of_drive(disks: &[LiveDisk], drive: DriveId) -> Option<&LiveDisk> {
    let serial = disk_serial(drive);
    disks
        .iter()
        .find(|d| d.serial.as_deref() == Some(serial.as_str()))
}

/// Device XML that identifies `disk` for a detach: libvirt matches disks by target name.
pub fn detach_xml(disk: &LiveDisk) -> Result<String, HypervisorError> {
    const WHAT: &str = "Building the detach XML failed";
    let mut w = new_writer();
    w.create_element("disk")
        .with_attributes([("type", "file"), ("device", "disk")])
        .write_inner_content(|w| {
            if let Some(source) = &disk.source {
                w.create_element("source")
                    .with_attribute(("file", source.as_str()))
                    .write_empty()?;
            }
            w.create_element("target")
                .with_attributes([
                    ("dev", disk.target.as_str()),
                    ("bus", disk.bus.as_deref().unwrap_or("virtio")),
                ])
                .write_empty()?;
            Ok::<_, quick_xml::Error>(())
        })
        .map_err(|e| xml_error(WHAT, e))?;
    finish(w, WHAT)
}

/// The `<description>` of a secret XML, if it has one.
pub fn secret_description(secret_xml: &str) -> Result<Option<String>, HypervisorError> {
    let mut reader = Reader::from_str(secret_xml);
    let mut depth = 0usize;
    let mut in_description = false;
    let mut description: Option<String> = None;
    loop {
        let ev = reader
            .read_event()
            .map_err(|e| xml_error("Reading the secret XML failed", e))?;
        match ev {
            Event::Start(e) => {
                depth += 1;
                in_description = depth == 2 && e.name().as_ref() == b"description";
                if in_description {
                    description = Some(String::new());
                }
            }
            Event::Text(t) if in_description => {
                let text = t
                    .unescape()
                    .map_err(|e| xml_error("Reading the secret XML failed", e))?;
                description.get_or_insert_with(String::new).push_str(&text);
            }
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                in_description = false;
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(description)
}

/// The fleet host named in a domain's vmwarden metadata element (as libvirt gives it back,
/// whatever prefix it chose), if any: each agent looks after its own host's domains only.
pub fn metadata_host(metadata: &str) -> Option<String> {
    let mut reader = Reader::from_str(metadata);
    let mut depth = 0usize;
    let mut in_host = false;
    let mut host = None;
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) => {
                depth += 1;
                in_host = depth == 2 && e.local_name().as_ref() == b"host";
            }
            Event::Text(t) if in_host => host = Some(t.unescape().ok()?.into_owned()),
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                in_host = false;
            }
            Event::Eof => return host,
            _ => {}
        }
    }
}

/// Whether a secret description marks a secret vmwarden defined.
pub fn is_our_secret_description(description: &str) -> bool {
    description
        .strip_prefix(SECRET_DESCRIPTION_PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ProjectName, SecretBytes, VmId, VmName};
    use std::path::PathBuf;

    fn spec(paths: &[&str], log: &str) -> DomainSpec {
        DomainSpec {
            id: VmId::new_random(),
            name: VmName::parse("web-1").unwrap(),
            project: ProjectName::parse("genomics").unwrap(),
            host: "h1".into(),
            vcpus: 2,
            memory_mib: 64,
            disks: paths
                .iter()
                .map(|p| DiskSpec {
                    drive: DriveId::new_random(),
                    path: PathBuf::from(p),
                    passphrase: SecretBytes::new(b"not-in-the-xml".to_vec()),
                })
                .collect(),
            serial_log: PathBuf::from(log),
        }
    }

    /// Parses `xml` completely with end-name checks; panics on any error.
    fn assert_well_formed(xml: &str) {
        let mut r = Reader::from_str(xml);
        r.config_mut().check_end_names = true;
        let mut depth = 0i32;
        loop {
            match r.read_event().unwrap_or_else(|e| panic!("{e}: {xml}")) {
                Event::Start(_) => depth += 1,
                Event::End(_) => depth -= 1,
                Event::Eof => break,
                _ => {}
            }
        }
        assert_eq!(depth, 0, "{xml}");
    }

    #[test]
    fn targets_follow_libvirt_naming() {
        assert_eq!(disk_target(0), "vda");
        assert_eq!(disk_target(1), "vdb");
        assert_eq!(disk_target(25), "vdz");
        assert_eq!(disk_target(26), "vdaa");
        assert_eq!(disk_target(27), "vdab");
        assert_eq!(disk_target(26 + 26 * 26), "vdaaa");
    }

    #[test]
    fn serial_is_twenty_hex_digits_that_do_not_reveal_the_drive_id() {
        let d: DriveId = "0f8e4a2c-1b3d-4e5f-8a7b-9c0d1e2f3a4b".parse().unwrap();
        let s = disk_serial(d);
        assert_eq!(s.len(), 20);
        assert!(s.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!"0f8e4a2c1b3d4e5f8a7b9c0d1e2f3a4b".contains(&s[..8]), "{s}");
        assert_eq!(s, disk_serial(d), "stable, so the disk can be found again");
        assert_ne!(s, disk_serial(DriveId::new_random()));
    }

    #[test]
    fn domain_xml_has_the_required_shape() {
        let s = spec(
            &["/var/lib/vmwarden/drives/a.qcow2", "/d/b.qcow2"],
            "/l/s.log",
        );
        let secrets = [Uuid::new_v4(), Uuid::new_v4()];
        let xml = domain_xml(&s, DomainType::Kvm, &secrets).unwrap();
        assert_well_formed(&xml);
        let id = s.id.to_string();
        for needle in [
            "<domain type=\"kvm\">".to_owned(),
            format!("<name>{id}</name>"),
            format!("<uuid>{id}</uuid>"),
            format!("<vmwarden:vm xmlns:vmwarden=\"{METADATA_NS}\">"),
            "<vmwarden:name>web-1</vmwarden:name>".to_owned(),
            "<vmwarden:project>genomics</vmwarden:project>".to_owned(),
            "<vmwarden:host>h1</vmwarden:host>".to_owned(),
            "<memory unit=\"MiB\">64</memory>".to_owned(),
            "<vcpu>2</vcpu>".to_owned(),
            "<type arch=\"x86_64\" machine=\"pc\">hvm</type>".to_owned(),
            "<boot dev=\"hd\"/>".to_owned(),
            "<acpi/>".to_owned(),
            "<apic/>".to_owned(),
            "<on_poweroff>destroy</on_poweroff>".to_owned(),
            "<on_crash>destroy</on_crash>".to_owned(),
            "<target dev=\"vda\" bus=\"virtio\"/>".to_owned(),
            "<target dev=\"vdb\" bus=\"virtio\"/>".to_owned(),
            format!("<serial>{}</serial>", disk_serial(s.disks[0].drive)),
            format!("<serial>{}</serial>", disk_serial(s.disks[1].drive)),
            format!("<secret type=\"passphrase\" uuid=\"{}\"/>", secrets[0]),
            format!("<secret type=\"passphrase\" uuid=\"{}\"/>", secrets[1]),
            "<encryption format=\"luks\">".to_owned(),
            "<driver name=\"qemu\" type=\"qcow2\"/>".to_owned(),
            "<source path=\"/l/s.log\"/>".to_owned(),
            "<memballoon model=\"none\"/>".to_owned(),
        ] {
            assert!(xml.contains(&needle), "missing {needle} in {xml}");
        }
        assert!(!xml.contains("not-in-the-xml"));
        assert!(!xml.contains("<interface"));
        assert!(!xml.contains("<graphics"));
        // Encryption belongs inside <source>, where libvirt keeps it for blockdev.
        let disks = live_disks(&xml).unwrap();
        assert_eq!(disks.len(), 2);
        assert_eq!(
            disks[0].source.as_deref(),
            Some("/var/lib/vmwarden/drives/a.qcow2")
        );
        let src = xml.find("<source file=\"/d/b.qcow2\">").unwrap();
        let enc = xml[src..].find("<encryption").unwrap() + src;
        let end = xml[src..].find("</source>").unwrap() + src;
        assert!(enc < end);
        let qemu = domain_xml(&s, DomainType::Qemu, &secrets).unwrap();
        assert!(qemu.starts_with("<domain type=\"qemu\">"));
    }

    #[test]
    fn hostile_paths_are_escaped() {
        let hostile = "/x/'\"><evil attr='1'/>&amp;</source></disk><disk>.qcow2";
        let log = "/l/<serial>&'\".log";
        let s = spec(&[hostile], log);
        let xml = domain_xml(&s, DomainType::Qemu, &[Uuid::new_v4()]).unwrap();
        assert_well_formed(&xml);
        assert!(!xml.contains("<evil"));
        let disks = live_disks(&xml).unwrap();
        assert_eq!(disks.len(), 1);
        assert_eq!(disks[0].source.as_deref(), Some(hostile));
        let one = disk_xml(&s.disks[0], "vdb", Uuid::new_v4()).unwrap();
        assert_well_formed(&one);
        assert!(!one.contains("<evil"));
        let detach = detach_xml(&disks[0]).unwrap();
        assert_well_formed(&detach);
        assert!(!detach.contains("<evil"));
    }

    #[test]
    fn relative_or_auto_inputs_are_refused() {
        let s = spec(&["relative.qcow2"], "/l/s.log");
        assert!(domain_xml(&s, DomainType::Kvm, &[Uuid::new_v4()]).is_err());
        let s = spec(&["/a.qcow2"], "log");
        assert!(domain_xml(&s, DomainType::Kvm, &[Uuid::new_v4()]).is_err());
        let s = spec(&["/a.qcow2"], "/log");
        assert!(domain_xml(&s, DomainType::Auto, &[Uuid::new_v4()]).is_err());
        assert!(domain_xml(&s, DomainType::Kvm, &[]).is_err());
    }

    #[test]
    fn secret_xml_round_trips_its_description() {
        let drive = DriveId::new_random();
        let uuid = Uuid::new_v4();
        let xml = secret_xml(uuid, drive).unwrap();
        assert_well_formed(&xml);
        assert!(xml.starts_with("<secret ephemeral=\"yes\" private=\"yes\">"));
        assert!(xml.contains(&format!("<uuid>{uuid}</uuid>")));
        let d = secret_description(&xml).unwrap().unwrap();
        assert_eq!(d, format!("vmwarden drive {drive}"));
        assert!(is_our_secret_description(&d));
        assert!(!is_our_secret_description("vmwarden drivex"));
        assert!(!is_our_secret_description("other"));
        let libvirt_style = "<secret ephemeral='yes' private='yes'>\n  <uuid>u</uuid>\n  \
             <description>a &amp; b</description>\n  <usage type='volume'><volume>/v</volume></usage>\n</secret>\n";
        assert_eq!(
            secret_description(libvirt_style).unwrap().as_deref(),
            Some("a & b")
        );
        assert_eq!(
            secret_description("<secret><uuid>u</uuid></secret>").unwrap(),
            None
        );
    }

    #[test]
    fn metadata_names_the_host_whatever_the_prefix() {
        let m = format!(
            "<v:vm xmlns:v=\"{METADATA_NS}\"><v:name>a</v:name><v:host>h&amp;2</v:host></v:vm>"
        );
        assert_eq!(metadata_host(&m).as_deref(), Some("h&2"));
        assert_eq!(
            metadata_host("<vmwarden:vm><vmwarden:name>a</vmwarden:name></vmwarden:vm>"),
            None
        );
        assert_eq!(metadata_host("<vm><x><host>deep</host></x></vm>"), None);
    }

    #[test]
    fn live_disks_skip_backing_stores_and_find_free_targets() {
        let drive = DriveId::new_random();
        let serial = disk_serial(drive);
        let live = format!(
            "<domain type='kvm' id='3'>\n<name>x</name>\n<devices>\n\
             <emulator>/usr/bin/qemu-system-x86_64</emulator>\n\
             <disk type='file' device='disk'>\n<driver name='qemu' type='qcow2'/>\n\
             <source file='/d/a.qcow2' index='2'><encryption format='luks'>\
             <secret type='passphrase' uuid='0'/></encryption></source>\n\
             <backingStore type='file' index='3'><format type='raw'/><source file='/d/base'/>\
             <backingStore/></backingStore>\n\
             <target dev='vda' bus='virtio'/>\n<serial>{serial}</serial>\n\
             <alias name='virtio-disk0'/>\n</disk>\n\
             <disk type='file' device='cdrom'><target dev='vdc' bus='sata'/><readonly/></disk>\n\
             <serial type='file'><source path='/l'/><target port='0'/></serial>\n\
             </devices>\n</domain>\n"
        );
        let disks = live_disks(&live).unwrap();
        assert_eq!(disks.len(), 2);
        assert_eq!(disks[0].source.as_deref(), Some("/d/a.qcow2"));
        assert_eq!(disks[0].target, "vda");
        assert_eq!(disks[0].alias.as_deref(), Some("virtio-disk0"));
        assert_eq!(disks[1].target, "vdc");
        assert_eq!(first_free_target(&disks), "vdb");
        assert_eq!(disk_of_drive(&disks, drive).unwrap().target, "vda");
        assert!(disk_of_drive(&disks, DriveId::new_random()).is_none());
        assert_eq!(first_free_target(&[]), "vda");
        assert!(live_disks("<domain><devices><disk>").is_err());
    }
}

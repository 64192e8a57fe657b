//! Raw sockets: clients that hang up, pipeline, hog connections or connect as another Unix
//! user.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A whole HTTP/1.1 request as bytes, as a raw client would send it.
pub fn raw_request(
    method: &str,
    path: &str,
    user: Option<&str>,
    body: Option<&serde_json::Value>,
) -> Vec<u8> {
    let body = body
        .map(|b| serde_json::to_vec(b).unwrap())
        .unwrap_or_default();
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(u) = user {
        r.push_str(&format!("vmwarden-user: {u}\r\n"));
    }
    r.push_str("\r\n");
    let mut r = r.into_bytes();
    r.extend_from_slice(&body);
    r
}

/// Sends `request` and hangs up `after` it, reading nothing: the client that gives up.
pub fn hang_up(socket: &Path, request: &[u8], after: Duration) {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.write_all(request).unwrap();
    if !after.is_zero() {
        std::thread::sleep(after);
    }
    drop(s);
}

/// Sends `request` and reads the whole answer (one response; `connection: close` is not
/// assumed, the body length is).
pub fn raw_roundtrip(socket: &Path, request: &[u8]) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.write_all(request).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).unwrap();
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let status = head[9..12].parse().unwrap();
                let body = serde_json::from_slice(&buf[end + 4..end + 4 + len]).unwrap_or_default();
                return (status, body);
            }
        }
    }
    panic!(
        "connection closed before a whole answer: {}",
        String::from_utf8_lossy(&buf)
    );
}

/// Holds `n` connections to `socket` open as Unix user `uid` (a forked child that drops
/// root), each having sent `payload` and reading nothing. Kill the returned child to free
/// them. Everything the child needs is prepared before the fork, so the child only makes
/// system calls (safe after fork in a threaded process).
pub fn hog_as(uid: u32, path: &Path, n: usize, payload: &[u8]) -> nix::unistd::Pid {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let addr = UnixAddr::new(path).unwrap();
    let payload = payload.to_vec();
    // SAFETY: the child only calls async-signal-safe functions (setgroups, setgid, setuid,
    // socket, connect, write, pause, _exit) on memory prepared before the fork.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Parent { child } => child,
        nix::unistd::ForkResult::Child => {
            let gid = nix::unistd::Gid::from_raw(uid);
            let ok = nix::unistd::setgroups(&[]).is_ok()
                && nix::unistd::setgid(gid).is_ok()
                && nix::unistd::setuid(nix::unistd::Uid::from_raw(uid)).is_ok();
            if !ok {
                // SAFETY: _exit ends the child without running the parent's destructors.
                unsafe { libc::_exit(2) };
            }
            for _ in 0..n {
                if let Ok(fd) = socket(
                    AddressFamily::Unix,
                    SockType::Stream,
                    SockFlag::empty(),
                    None,
                ) {
                    use std::os::fd::AsRawFd;
                    if connect(fd.as_raw_fd(), &addr).is_ok() {
                        let _ = nix::unistd::write(&fd, &payload);
                    }
                    std::mem::forget(fd);
                }
            }
            loop {
                // SAFETY: pause only waits for a signal.
                unsafe { libc::pause() };
            }
        }
    }
}

/// Ends a child started by `hog_as`.
pub fn unhog(pid: nix::unistd::Pid) {
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(pid, None);
}

/// Sends one raw request as Unix user `uid` (setpriv + socat) and returns the raw answer.
pub fn as_uid(uid: u32, socket: &Path, request: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "socat",
            "-t",
            "5",
            "-",
        ])
        .arg(format!("UNIX-CONNECT:{}", socket.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut req = request.to_vec();
    // One request per connection: the daemon closes after answering it.
    if let Some(end) = req.windows(4).position(|w| w == b"\r\n\r\n") {
        req.splice(end + 2..end + 2, b"connection: close\r\n".iter().copied());
    }
    child.stdin.take().unwrap().write_all(&req).unwrap();
    String::from_utf8_lossy(&child.wait_with_output().unwrap().stdout).into_owned()
}

/// Sends `method path` with `connection: close` and reads to the end: the response head
/// (lowercase) and the body bytes exactly as they came.
pub fn raw_head_and_body(socket: &Path, method: &str, path: &str) -> (String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    (
        String::from_utf8_lossy(&buf[..end]).to_lowercase(),
        buf[end + 4..].to_vec(),
    )
}

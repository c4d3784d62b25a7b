//! sd_notify that never blocks the daemon's loop.
//!
//! The sd-notify crate sends on a blocking datagram socket. When the
//! receiver does not read (its queue holds 10 datagrams by default), the
//! send waits for it, and the whole loop with it: in the end-to-end test,
//! whose harness reads the notify socket only when it waits for a
//! message, banjo stopped reading the journal after ten unread `STATUS=`
//! lines. Here the send is non-blocking: a message that finds the queue
//! full is dropped (the next status report or watchdog ping replaces it).

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;

use sd_notify::NotifyState;

/// Sends `states` to `$NOTIFY_SOCKET` (a path, or `@name` for an
/// abstract socket); nothing when it is unset.
pub(super) fn notify(states: &[NotifyState]) -> io::Result<()> {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let mut msg = String::new();
    for state in states {
        msg.push_str(&state.to_string());
        msg.push('\n');
    }
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    let sent = match target.as_bytes().strip_prefix(b"@") {
        Some(name) => sock.send_to_addr(msg.as_bytes(), &SocketAddr::from_abstract_name(name)?)?,
        None => sock.send_to(msg.as_bytes(), Path::new(&target))?,
    };
    if sent != msg.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "incomplete write"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receiver_that_does_not_read_never_blocks_the_sender() {
        let dir = std::env::temp_dir().join(format!("banjo-notify-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("notify.sock");
        let receiver = UnixDatagram::bind(&path).expect("bind");
        std::env::set_var("NOTIFY_SOCKET", &path);
        let mut full = 0;
        for _ in 0..100 {
            if notify(&[NotifyState::Status("x")]).is_err() {
                full += 1;
            }
        }
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).expect("the first message arrived");
        assert_eq!(&buf[..n], b"STATUS=x\n");
        assert!(full > 0, "a full queue drops messages instead of waiting");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

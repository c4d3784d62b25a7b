//! The daemon's side of the control socket.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::{Gid, Uid};

use super::{Error, Request, Response};

/// The longest request line accepted; anything longer is an error.
const MAX_REQUEST: u64 = 1 << 20;
/// How long a client may take to send its request: the daemon's loop
/// waits for it, so a stalled client must not stall banning for long.
const READ_TIMEOUT: Duration = Duration::from_millis(500);

/// Who is asking.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    /// The peer's uid.
    pub uid: u32,
    /// The peer's pid.
    pub pid: i32,
    /// Whether the peer is root or in the socket's group.
    in_group: bool,
}

impl Peer {
    /// Whether the peer may make `request`.
    pub fn may(&self, request: &Request) -> bool {
        self.uid == 0 || (self.in_group && request.is_read_only())
    }
}

/// The listening socket.
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    group: Option<Gid>,
}

impl Server {
    /// Binds `path` (replacing a stale socket), mode 0660, owned by `group`
    /// when given.
    pub fn bind(path: &Path, group: Option<u32>) -> Result<Server, Error> {
        let err = |what: &'static str| {
            let path = path.to_path_buf();
            move |source| Error::Socket { path, what, source }
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err("creating the socket directory"))?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err("removing the old socket")(e)),
        }
        let listener = UnixListener::bind(path).map_err(err("binding"))?;
        listener
            .set_nonblocking(true)
            .map_err(err("setting non-blocking"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(err("setting the mode"))?;
        let group = group.map(Gid::from_raw);
        if let Some(gid) = group {
            nix::unistd::chown(path, None, Some(gid))
                .map_err(|e| err("setting the group")(std::io::Error::from(e)))?;
        }
        Ok(Server {
            listener,
            path: path.to_path_buf(),
            group,
        })
    }

    /// Accepts one pending connection and reads its request. `None` when
    /// nothing is pending; a client that sends garbage gets its error
    /// answered here and `None`.
    pub fn accept(&self) -> Option<(Connection, Peer, Request)> {
        let (stream, _) = self.listener.accept().ok()?;
        let peer = match getsockopt(&stream, PeerCredentials) {
            Ok(c) => Peer {
                uid: c.uid(),
                pid: c.pid(),
                in_group: c.uid() == 0 || self.peer_in_group(&stream, c.gid()),
            },
            Err(_) => return None,
        };
        let mut conn = Connection { stream };
        let _ = conn.stream.set_nonblocking(false);
        let _ = conn.stream.set_read_timeout(Some(READ_TIMEOUT));
        let _ = conn.stream.set_write_timeout(Some(READ_TIMEOUT));
        let mut line = String::new();
        let reader = conn.stream.try_clone().ok()?;
        let read = BufReader::new(std::io::Read::take(reader, MAX_REQUEST)).read_line(&mut line);
        match read {
            Ok(n) if n > 0 => match serde_json::from_str::<Request>(line.trim()) {
                Ok(request) => Some((conn, peer, request)),
                Err(e) => {
                    conn.reply(&Response::error(format!("bad request: {e}")));
                    None
                }
            },
            _ => None,
        }
    }

    fn peer_in_group(&self, stream: &UnixStream, gid: u32) -> bool {
        let Some(group) = self.group else {
            return false;
        };
        gid == group.as_raw() || peer_groups(stream).contains(&group.as_raw())
    }

    /// Whether this process is root (a non-root daemon cannot grant root).
    pub fn running_as_root() -> bool {
        Uid::effective().is_root()
    }
}

impl AsFd for Server {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The peer's supplementary groups, as the kernel recorded them at
/// connect (SO_PEERGROUPS): no /proc lookup, so no race with the pid and
/// nothing for ProtectProc= to hide.
fn peer_groups(stream: &UnixStream) -> Vec<u32> {
    use std::os::fd::AsRawFd;
    let mut groups = vec![0 as libc::gid_t; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the buffer is valid for `len` bytes and the kernel
        // writes at most that many, reporting the size it needs.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(needed);
            return groups;
        }
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::ERANGE)
            && needed > groups.len()
        {
            groups.resize(needed, 0);
            continue;
        }
        return Vec::new();
    }
}

/// An accepted client, waiting for its answer.
pub struct Connection {
    stream: UnixStream,
}

impl Connection {
    /// Sends the answer; a client that went away is not an error.
    pub fn reply(&mut self, response: &Response) {
        if let Ok(mut text) = serde_json::to_vec(response) {
            text.push(b'\n');
            let _ = self.stream.write_all(&text);
        }
    }
}

//! A small SMTP client for the end-to-end suite: std's TcpStream over a
//! socket created (and bound to a chosen source address) inside a network
//! namespace, so that one client namespace can speak for many addresses.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6,
};

use crate::util::Netns;

/// Standard base64 (RFC 4648, with padding), as SMTP AUTH wants it.
pub fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Opens a TCP connection from `source` (an address of `ns`) to `dest`.
/// The socket is created inside `ns` on a short-lived thread; it keeps its
/// namespace when handed back. Refused (a ban's TCP reset) is
/// `Err(ECONNREFUSED)`.
pub fn dial(ns: &Netns, source: IpAddr, dest: SocketAddr) -> Result<TcpStream, Errno> {
    ns.within(move || {
        let family = match dest {
            SocketAddr::V4(_) => AddressFamily::Inet,
            SocketAddr::V6(_) => AddressFamily::Inet6,
        };
        let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
        match (source, dest) {
            (IpAddr::V4(s), SocketAddr::V4(d)) => {
                bind(
                    fd.as_raw_fd(),
                    &SockaddrIn::from(std::net::SocketAddrV4::new(s, 0)),
                )?;
                connect(fd.as_raw_fd(), &SockaddrIn::from(d))?;
            }
            (IpAddr::V6(s), SocketAddr::V6(d)) => {
                bind(
                    fd.as_raw_fd(),
                    &SockaddrIn6::from(std::net::SocketAddrV6::new(s, 0, 0, 0)),
                )?;
                connect(fd.as_raw_fd(), &SockaddrIn6::from(d))?;
            }
            _ => return Err(Errno::EAFNOSUPPORT),
        }
        Ok(TcpStream::from(fd))
    })
}

/// One SMTP reply: the code and the text of every line.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// An SMTP session (the banner already read).
pub struct Session {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
    pub banner: Reply,
}

impl Session {
    /// Connects and reads the 220 banner. `Err` is the connect errno (a ban
    /// shows as ECONNREFUSED).
    pub fn open(ns: &Netns, source: IpAddr, dest: SocketAddr) -> Result<Session, Errno> {
        let stream = dial(ns, source, dest)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        stream
            .set_write_timeout(Some(Duration::from_secs(30)))
            .expect("write timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone stream"));
        let mut s = Session {
            reader,
            stream,
            banner: Reply {
                code: 0,
                lines: Vec::new(),
            },
        };
        s.banner = s.reply();
        assert_eq!(s.banner.code, 220, "banner from {dest}: {:?}", s.banner);
        Ok(s)
    }

    /// Reads one (possibly multi-line) reply.
    pub fn reply(&mut self) -> Reply {
        self.try_reply()
            .unwrap_or_else(|(e, lines)| panic!("reading an SMTP reply: {e} (so far {lines:?})"))
    }

    /// Reads one reply; a read error comes with the lines read before it.
    fn try_reply(&mut self) -> Result<Reply, (std::io::Error, Vec<String>)> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = match self.reader.read_line(&mut line) {
                Ok(n) => n,
                Err(e) => return Err((e, lines)),
            };
            assert!(n > 0, "server closed the connection (so far {lines:?})");
            let line = line.trim_end_matches(['\r', '\n']).to_string();
            let more = line.as_bytes().get(3) == Some(&b'-');
            let code: u16 = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .unwrap_or_else(|| panic!("not an SMTP reply: {line:?}"));
            lines.push(line);
            if !more {
                return Ok(Reply { code, lines });
            }
        }
    }

    /// Sends raw bytes (a command line without CRLF is given CRLF).
    pub fn send(&mut self, line: &[u8]) {
        let mut data = line.to_vec();
        data.extend_from_slice(b"\r\n");
        self.stream.write_all(&data).expect("write to SMTP server");
    }

    /// Sends a command and reads its reply.
    pub fn cmd(&mut self, line: &str) -> Reply {
        self.send(line.as_bytes());
        self.reply()
    }

    /// Sends a command and asserts the reply code.
    pub fn expect(&mut self, line: &str, code: u16) -> Reply {
        let r = self.cmd(line);
        assert_eq!(r.code, code, "{line:?} -> {r:?}");
        r
    }

    /// EHLO, expecting 250.
    pub fn ehlo(&mut self, name: &str) -> Reply {
        self.expect(&format!("EHLO {name}"), 250)
    }

    /// AUTH PLAIN with an initial response; the reply (235 or 535).
    pub fn auth_plain(&mut self, user: &[u8], password: &[u8]) -> Reply {
        let mut blob = vec![0u8];
        blob.extend_from_slice(user);
        blob.push(0);
        blob.extend_from_slice(password);
        self.cmd(&format!("AUTH PLAIN {}", base64(&blob)))
    }

    /// AUTH LOGIN, username and password in turn; the final reply.
    pub fn auth_login(&mut self, user: &[u8], password: &[u8]) -> Reply {
        self.expect("AUTH LOGIN", 334);
        let r = self.cmd(&base64(user));
        assert_eq!(r.code, 334, "username -> {r:?}");
        self.cmd(&base64(password))
    }

    /// QUIT, expecting 221, and close.
    pub fn quit(mut self) {
        self.expect("QUIT", 221);
    }

    /// QUIT after a failure that may have banned the client: its ban's
    /// TCP reset can cut the session before the 221 comes (banjo bans
    /// within a millisecond of Postfix logging the failure). Whether the
    /// ban is right is checked elsewhere, against the set and the log.
    pub fn quit_or_cut(mut self) {
        let cut = |e: &std::io::Error| {
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            )
        };
        if let Err(e) = self.stream.write_all(b"QUIT\r\n") {
            assert!(cut(&e), "sending QUIT: {e}");
            return;
        }
        match self.try_reply() {
            Ok(r) => assert_eq!(r.code, 221, "QUIT -> {r:?}"),
            Err((e, lines)) => assert!(
                cut(&e) && lines.is_empty(),
                "reading the reply to QUIT: {e} (so far {lines:?})"
            ),
        }
    }

    /// Hangs up without QUIT (both directions shut down, then closed).
    pub fn hang_up(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

//! The CLI's side of the control socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::{Error, Request, Response};

/// Sends `request` to the daemon at `path` and waits for the answer.
/// Reload can take a while (a big configuration, a long replay), hence
/// the generous timeout.
pub fn request(path: &Path, request: &Request) -> Result<Response, Error> {
    let err = |what: &'static str| {
        let path = path.to_path_buf();
        move |source| Error::Socket { path, what, source }
    };
    let mut stream = UnixStream::connect(path).map_err(err("connecting (is banjo running?)"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(err("setting a timeout"))?;
    let mut line = serde_json::to_vec(request).map_err(|e| Error::Protocol(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(err("sending"))?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(err("reading the answer"))?;
    serde_json::from_str(answer.trim()).map_err(|e| Error::Protocol(format!("{e}: {answer:?}")))
}

//! The file of a Unix-socket listener (`server.listen = "unix:PATH"`).
//!
//! A socket file outlives the process that bound it when that process is killed, and `bind`
//! fails on an existing file. Starting over a stale one is what an operator expects; taking
//! over a live one (another edgetoken still serving there) or deleting a file that is not a
//! socket is not. So: a socket nobody listens on is replaced, anything else is refused with
//! the reason. The file gets the configured mode right after `bind` (connecting needs write
//! permission on it), and is removed on a clean stop only if it is still the one this process
//! made.

use std::fs::{self, Permissions};
use std::io;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// The socket file this process bound; dropping it removes the file if it is still that one.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    /// The file `bind` made, so a file put there since is left alone.
    identity: Identity,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if identity(&self.path).ok().flatten() == Some(self.identity) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Listens on a Unix socket at `path`, whose file gets permissions `mode`. A stale socket
/// file (nobody accepts on it) is replaced. Must be called within a tokio runtime.
///
/// # Errors
///
/// `AddrInUse` when a process accepts connections on the socket already, `AlreadyExists`
/// when `path` is something other than a socket, and any error of removing the stale file,
/// binding or setting the mode (the half-made socket is removed then).
pub fn bind(path: &Path, mode: u32) -> io::Result<(UnixListener, SocketFile)> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        "another process is listening on this socket",
                    ));
                }
                // Nobody accepts on it: left over from a process that did not stop cleanly.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => fs::remove_file(path)?,
                Err(e) => return Err(e),
            }
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket; not replacing it",
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    let ready = (|| {
        fs::set_permissions(path, Permissions::from_mode(mode))?;
        identity(path)?.ok_or_else(|| io::Error::other("the socket file vanished after bind"))
    })();
    match ready {
        Ok(identity) => Ok((
            listener,
            SocketFile {
                path: path.to_owned(),
                identity,
            },
        )),
        Err(e) => {
            let _ = fs::remove_file(path);
            Err(e)
        }
    }
}

/// What tells one socket file from another at the same path: device and inode, and the time
/// of its last status change (the `chmod` after `bind`), because a file system may give a
/// new file the inode of one just removed.
type Identity = (u64, u64, i64, i64);

/// The identity of the socket at `path`; `None` when it is missing or not a socket.
fn identity(path: &Path) -> io::Result<Option<Identity>> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => Ok(Some((
            meta.dev(),
            meta.ino(),
            meta.ctime(),
            meta.ctime_nsec(),
        ))),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn binds_with_the_mode_and_removes_its_file_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let (listener, file) = bind(&path, 0o660).unwrap();
        assert_eq!(mode_of(&path), 0o660);
        drop(listener);
        drop(file);
        assert!(!path.exists(), "removed on a clean stop");
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_a_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        // Stale: bound by a "process" that went away without removing it.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let (live, _file) = bind(&path, 0o600).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        let refused = bind(&path, 0o600).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::AddrInUse, "{refused}");
        assert!(path.exists(), "the live socket is left in place");
        drop(live);
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_socket_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("important.txt");
        fs::write(&path, "keep me").unwrap();
        let refused = bind(&path, 0o660).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::AlreadyExists, "{refused}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "keep me");
    }

    #[tokio::test]
    async fn a_file_put_in_its_place_is_not_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let (listener, file) = bind(&path, 0o660).unwrap();
        drop(listener);
        fs::remove_file(&path).unwrap();
        // Another instance's socket now, not ours.
        let (_other, _other_file) = bind(&path, 0o660).unwrap();
        drop(file);
        assert!(path.exists(), "the newer socket is left alone");
    }
}

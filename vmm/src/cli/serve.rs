//! `krunbox serve`: the HTTP API (`crate::api`) on a Unix socket or a TCP port.

use crate::io_error::io;
use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::api::{self, auth::Access};

/// Serve krunbox's HTTP API (sandboxes, exec over WebSocket, files, images; documented in
/// api/openapi.json) for programs and the SDKs.
///
/// By default on a Unix socket only you can open (0600, in your runtime directory). With
/// --listen on TCP, every request must carry `Authorization: Bearer TOKEN`: the token of
/// --token-file or $KRUNBOX_API_TOKEN, else a new one written to a 0600 file whose path is
/// printed. Whoever holds the token can do what you can do with the krunbox command line,
/// including sharing your directories with a sandbox. Requests from web pages (with an
/// Origin header) are refused.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  krunbox serve\n  krunbox serve --socket /tmp/kb/api.sock\n  krunbox serve --listen 127.0.0.1:7070 --token-file ~/.config/krunbox/token\n  curl --unix-socket \"$XDG_RUNTIME_DIR/krunbox/api.sock\" http://krunbox/v1/sandboxes"
)]
pub struct ServeArgs {
    /// The Unix socket (default: api.sock in krunbox's runtime directory).
    #[arg(long, value_name = "PATH", conflicts_with = "listen")]
    pub socket: Option<PathBuf>,
    /// Listen on TCP instead, at IP:PORT (a token is then required).
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Option<SocketAddr>,
    /// Read the bearer token from FILE (also on the Unix socket, where it is optional).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Exit when stdin reaches end of file: for a program that starts a server of its own
    /// and holds its stdin (the SDKs do), so the server ends with it.
    #[arg(long)]
    pub stdin_lifeline: bool,
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A socket, token file or runtime directory.
    #[error(transparent)]
    Io(#[from] crate::io_error::IoError),
    /// Another server answers on the socket.
    #[error("another krunbox serve already listens on {0} (stop it, or give --socket)")]
    InUse(PathBuf),
    /// The socket's directory is open to others.
    #[error(
        "{0}: the socket's directory must be yours and closed to others (mode 0755 or stricter)"
    )]
    OpenDirectory(PathBuf),
    /// Something else is where the socket should go.
    #[error("{0} exists and is not a socket: give another --socket")]
    NotASocket(PathBuf),
    /// A token file others can read.
    #[error("{0}: others can read this token file (chmod 600 it)")]
    OpenTokenFile(PathBuf),
    /// A token that is too short to guard anything.
    #[error("the token in {0} is shorter than 16 characters")]
    WeakToken(PathBuf),
    /// The async runtime.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// The data directory.
    #[error(transparent)]
    DataDir(#[from] crate::private_dir::PrivateDirError),
}

/// `krunbox serve`.
pub fn serve(args: ServeArgs) -> Result<i32, ServeError> {
    // Before any thread starts: the token leaves the environment the VMs' processes inherit.
    let token = token(&args)?;
    std::env::remove_var("KRUNBOX_API_TOKEN");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    runtime.block_on(async {
        let shutdown = shutdown_signal(args.stdin_lifeline);
        match args.listen {
            Some(addr) => {
                let (token, token_path) = match token {
                    Some(token) => (token, None),
                    None => new_token()?,
                };
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(io("listen on", Path::new(&addr.to_string())))?;
                let local = listener
                    .local_addr()
                    .map_err(io("listen on", Path::new("tcp")))?;
                match token_path {
                    Some(path) => eprintln!(
                        "krunbox serve: listening on http://{local} (bearer token in {})",
                        path.display()
                    ),
                    None => eprintln!("krunbox serve: listening on http://{local}"),
                }
                axum::serve(listener, api::router(Access::token(&token)))
                    .with_graceful_shutdown(shutdown)
                    .await
                    .map_err(io("serve on", Path::new(&local.to_string())))?;
            }
            None => {
                let path = match &args.socket {
                    Some(path) => path.clone(),
                    None => default_socket()?,
                };
                let listener = bind_unix(&path)?;
                eprintln!("krunbox serve: listening on {}", path.display());
                let access = token.as_deref().map_or_else(Access::open, Access::token);
                let served = axum::serve(listener, api::router(access))
                    .with_graceful_shutdown(shutdown)
                    .await;
                let _ = std::fs::remove_file(&path);
                served.map_err(io("serve on", &path))?;
            }
        }
        Ok(0)
    })
}

/// `api.sock` in krunbox's runtime directory (made private if missing).
fn default_socket() -> Result<PathBuf, ServeError> {
    let root = crate::paths::runtime_root();
    crate::private_dir::ensure(&root, crate::paths::RUNTIME_SETTING)?;
    Ok(root.join("api.sock"))
}

/// Binds `path`, 0600 from the start: the socket is made in a private directory beside it
/// and renamed into place, so there is no moment when others could connect. The directory
/// must be the user's own and closed to others (or a stranger could swap the socket for
/// theirs). A socket nobody answers on is a dead server's and is replaced; any other file
/// there is left alone.
fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener, ServeError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    let meta = std::fs::metadata(&parent).map_err(io("inspect", &parent))?;
    if meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o022 != 0 {
        return Err(ServeError::OpenDirectory(parent));
    }
    match std::fs::symlink_metadata(path) {
        Ok(existing) if existing.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServeError::InUse(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(io("remove the stale socket", path))?;
        }
        Ok(_) => return Err(ServeError::NotASocket(path.to_owned())),
        Err(_) => {}
    }
    let staging = tempfile::Builder::new()
        .prefix(".krunbox-api.")
        .tempdir_in(&parent)
        .map_err(io("create a directory in", &parent))?;
    let staged = staging.path().join("api.sock");
    let listener = tokio::net::UnixListener::bind(&staged).map_err(io("listen on", &staged))?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
        .map_err(io("restrict", &staged))?;
    std::fs::rename(&staged, path).map_err(io("move the socket to", path))?;
    Ok(listener)
}

/// The token of --token-file or `$KRUNBOX_API_TOKEN`, if one is given.
fn token(args: &ServeArgs) -> Result<Option<String>, ServeError> {
    let (token, source) = match &args.token_file {
        Some(path) => {
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::metadata(path).map_err(io("inspect", path))?;
            if meta.mode() & 0o077 != 0 {
                return Err(ServeError::OpenTokenFile(path.clone()));
            }
            let text = std::fs::read_to_string(path).map_err(io("read", path))?;
            (text.trim().to_owned(), path.clone())
        }
        None => match std::env::var("KRUNBOX_API_TOKEN") {
            Ok(token) if !token.is_empty() => (token, PathBuf::from("$KRUNBOX_API_TOKEN")),
            _ => return Ok(None),
        },
    };
    if token.chars().count() < 16 {
        return Err(ServeError::WeakToken(source));
    }
    Ok(Some(token))
}

/// A new random token, written to `api-token` (0600) in the runtime directory.
fn new_token() -> Result<(String, Option<PathBuf>), ServeError> {
    let mut bytes = [0u8; 32];
    let urandom = Path::new("/dev/urandom");
    std::fs::File::open(urandom)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io("read", urandom))?;
    let token = hex::encode(bytes);
    let root = crate::paths::runtime_root();
    crate::private_dir::ensure(&root, crate::paths::RUNTIME_SETTING)?;
    let path = root.join("api-token");
    let temp = tempfile::NamedTempFile::new_in(&root).map_err(io("create a file in", &root))?;
    std::fs::write(temp.path(), &token).map_err(io("write", temp.path()))?;
    temp.persist(&path)
        .map_err(|e| io("write", &path)(e.error))?;
    Ok((token, Some(path)))
}

/// Resolves at an ending signal (and at stdin's end with `lifeline`).
async fn shutdown_signal(lifeline: bool) {
    let stdin_closed = async move {
        if lifeline {
            crate::self_spawn::lifeline_end().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = crate::self_spawn::ending_signal() => {}
        () = stdin_closed => {}
    }
}

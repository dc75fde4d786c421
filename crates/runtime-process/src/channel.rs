//! Message channels to a zygote and its instances: `SOCK_SEQPACKET` Unix sockets carrying one
//! JSON object per message, with file descriptors attached (`SCM_RIGHTS`) and the sender's pid
//! as the kernel reports it in Hangar's pid namespace (`SCM_CREDENTIALS`).

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Largest message either side sends.
const MAX_MESSAGE: usize = 64 * 1024;

/// One received message.
#[derive(Debug)]
pub struct Message {
    pub body: serde_json::Value,
    pub fds: Vec<OwnedFd>,
    /// The sender's pid in Hangar's pid namespace.
    pub pid: Option<i32>,
}

/// Registers a socket with tokio. `AsyncFd::new` is deprecated because an `AsRawFd` type could
/// close or swap its descriptor while registered; an `OwnedFd` moved into the `AsyncFd` cannot,
/// since nothing else can reach it until the `AsyncFd` (and its registration) is gone.
#[allow(deprecated)]
fn register(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    AsyncFd::new(fd)
}

/// Hangar's end of a channel.
pub struct Channel {
    fd: AsyncFd<OwnedFd>,
}

impl Channel {
    /// A connected pair: Hangar's end (non-blocking, with credentials passing) and the end to
    /// hand to the other process (blocking, as a plain program expects).
    pub fn pair() -> std::io::Result<(Channel, OwnedFd)> {
        let (ours, theirs) = rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?;
        rustix::io::ioctl_fionbio(&ours, true)?;
        rustix::net::sockopt::set_socket_passcred(&ours, true)?;
        Ok((Channel { fd: register(ours)? }, theirs))
    }

    /// Sends one message with `fds` attached.
    pub async fn send(&self, body: &serde_json::Value, fds: &[std::os::fd::BorrowedFd<'_>]) -> std::io::Result<()> {
        let data = serde_json::to_vec(body).map_err(std::io::Error::other)?;
        self.fd
            .async_io(Interest::WRITABLE, |fd| {
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
                    return Err(std::io::Error::other("too many descriptors for one message"));
                }
                Ok(rustix::net::sendmsg(fd.as_fd(), &[IoSlice::new(&data)], &mut control, SendFlags::NOSIGNAL)?)
            })
            .await
            .map(|_| ())
    }

    /// Receives the next message; `None` when the other side has closed. Cancel-safe: a
    /// message is only taken off the socket by the call that returns it.
    pub async fn recv(&self) -> std::io::Result<Option<Message>> {
        self.fd
            .async_io(Interest::READABLE, |fd| {
                let mut data = vec![0u8; MAX_MESSAGE];
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4), ScmCredentials(1))];
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let got = rustix::net::recvmsg(fd.as_fd(), &mut [IoSliceMut::new(&mut data)], &mut control, RecvFlags::CMSG_CLOEXEC)?;
                let mut fds = Vec::new();
                let mut pid = None;
                for msg in control.drain() {
                    match msg {
                        RecvAncillaryMessage::ScmRights(received) => fds.extend(received),
                        RecvAncillaryMessage::ScmCredentials(cred) => pid = Some(cred.pid.as_raw_nonzero().get()),
                        _ => {}
                    }
                }
                if got.bytes == 0 {
                    return Ok(None);
                }
                let body = serde_json::from_slice(&data[..got.bytes])
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not a JSON message: {e}")))?;
                Ok(Some(Message { body, fds, pid }))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_carry_descriptors_and_the_senders_pid() {
        let (a, b) = Channel::pair().unwrap();
        rustix::io::ioctl_fionbio(&b, true).unwrap();
        let b = Channel { fd: register(b).unwrap() };
        let (r, w) = rustix::pipe::pipe().unwrap();
        b.send(&serde_json::json!({"type": "netns"}), &[w.as_fd()]).await.unwrap();
        let m = a.recv().await.unwrap().unwrap();
        assert_eq!(m.body["type"], "netns");
        assert_eq!(m.fds.len(), 1);
        assert_eq!(m.pid, Some(std::process::id() as i32));
        rustix::io::write(&m.fds[0], b"x").unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(rustix::io::read(&r, &mut buf).unwrap(), 1);
        drop(b);
        assert!(a.recv().await.unwrap().is_none(), "closed");
    }
}

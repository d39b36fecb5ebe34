//! Length-prefixed protobuf frames on the local socket between a raylet and
//! its workers: a little-endian u32 length, then one encoded message.
//!
//! A frame longer than [`MAX_FRAME`] is refused as corrupt, so a peer that
//! writes garbage cannot make the reader allocate without bound.

use std::io::{self, Read, Write};

use bytes::{Buf, BytesMut};
use prost::Message;

/// Largest frame accepted (arguments and results of one task travel in one frame).
pub const MAX_FRAME: usize = 1 << 31;

/// Appends `msg` as one frame to `buf`.
pub fn encode_into<M: Message>(msg: &M, buf: &mut BytesMut) {
    let len = msg.encoded_len();
    buf.reserve(4 + len);
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    // Encoding into a BytesMut with reserved room cannot fail.
    let _ = msg.encode(buf);
}

/// Splits one complete frame off the front of `buf`, if there is one.
pub fn decode_from<M: Message + Default>(buf: &mut BytesMut) -> io::Result<Option<M>> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes is too large")));
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    let body = buf.split_to(len).freeze();
    M::decode(body).map(Some).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("corrupt frame: {e}")))
}

/// Blocking read of one frame (the worker side); `None` at end of stream.
pub fn read_blocking<M: Message + Default, R: Read>(r: &mut R, buf: &mut BytesMut) -> io::Result<Option<M>> {
    loop {
        if let Some(m) = decode_from(buf)? {
            return Ok(Some(m));
        }
        let mut chunk = [0u8; 64 * 1024];
        let n = r.read(&mut chunk)?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, "stream ended inside a frame"))
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Blocking write of one frame (the worker side).
pub fn write_blocking<M: Message, W: Write>(w: &mut W, msg: &M) -> io::Result<()> {
    let mut buf = BytesMut::new();
    encode_into(msg, &mut buf);
    w.write_all(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::v1 as pb;

    #[test]
    fn frames_round_trip_and_garbage_is_refused() {
        let mut buf = BytesMut::new();
        let msg = pb::WorkerHello { worker_id: bytes::Bytes::from_static(b"12345678"), pid: 42, token: String::new() };
        encode_into(&msg, &mut buf);
        encode_into(&msg, &mut buf);
        let a: pb::WorkerHello = decode_from(&mut buf).unwrap().unwrap();
        assert_eq!(a, msg);
        let mut half = buf.split_to(3);
        assert!(decode_from::<pb::WorkerHello>(&mut half).unwrap().is_none());
        let mut bad = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 1][..]);
        assert!(decode_from::<pb::WorkerHello>(&mut bad).is_err());
        let mut corrupt = BytesMut::from(&[2, 0, 0, 0, 0xff, 0xff][..]);
        assert!(decode_from::<pb::WorkerHello>(&mut corrupt).is_err());
    }
}

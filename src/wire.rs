//! Framing on a QUIC stream: what `liaison/1` puts on the wire.
//!
//! A sender keeps one long-lived bidirectional stream per priority lane (FLASH, URGENT, ROUTINE)
//! to each partner. On it, each sealed packet copy is one frame: a 4-byte big-endian length, then
//! that many bytes. The receiver answers on the same stream with frames too, each a sealed
//! `DeliveryReceipt` covering one batch of the copies it received (in order). A stream that ends
//! between two frames ended cleanly; one that ends inside a frame did not.
//!
//! The length is checked against a limit **before** anything is allocated or read, so a peer
//! cannot make a node buffer more than one maximal packet per frame; the body is taken as it
//! arrives, and abandoned if it stops arriving.

/// Why a node resets a lane stream: the QUIC application error code it sends, so that the other
/// side can say why in its status instead of "queued".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// The partner stopped sending inside a frame, or broke the framing.
    Broken,
    /// A batch could not be stored (a storage error): no receipt, the copies will come again.
    NotStored,
    /// The disk is full: nothing of the batch was stored, no receipt; the copies will come
    /// again once space is freed.
    StorageFull,
}

impl Reset {
    /// The code on the wire.
    pub fn code(self) -> quinn::VarInt {
        quinn::VarInt::from_u32(match self {
            Self::Broken => 2,
            Self::NotStored => 3,
            Self::StorageFull => 7,
        })
    }

    /// The reset a code means, if any.
    pub fn of(code: quinn::VarInt) -> Option<Self> {
        match code.into_inner() {
            2 => Some(Self::Broken),
            3 => Some(Self::NotStored),
            7 => Some(Self::StorageFull),
            _ => None,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Self::Broken => "the stream broke off inside a frame",
            Self::NotStored => "a batch could not be stored there",
            Self::StorageFull => "its disk is full",
        }
    }
}

/// A read error: a reset with a known code is told apart.
fn read_error(e: quinn::ReadError) -> WireError {
    match e {
        quinn::ReadError::Reset(code) => match Reset::of(code) {
            Some(r) => WireError::Reset(r),
            None => WireError::Stream(e.to_string()),
        },
        e => WireError::Stream(e.to_string()),
    }
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The frame announces more bytes than allowed.
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The stream failed (connection lost, reset with a code that means nothing here).
    #[error("stream: {0}")]
    Stream(String),
    /// The partner reset the stream saying why.
    #[error("the partner reset the stream: {}", .0.text())]
    Reset(Reset),
    /// The frame's bytes stopped arriving.
    #[error("no bytes of the frame for {0:?}; abandoned")]
    Stalled(std::time::Duration),
}

/// Writes one frame.
pub async fn write_frame(send: &mut quinn::SendStream, bytes: &[u8]) -> Result<(), WireError> {
    let len =
        u32::try_from(bytes.len()).map_err(|_| WireError::TooLarge { len: bytes.len(), limit: u32::MAX as usize })?;
    let stream = |e: quinn::WriteError| WireError::Stream(e.to_string());
    if bytes.len() <= 64 * 1024 {
        // One write for small frames: one QUIC STREAM frame where it fits.
        let mut frame = Vec::with_capacity(4 + bytes.len());
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(bytes);
        send.write_all(&frame).await.map_err(stream)
    } else {
        send.write_all(&len.to_be_bytes()).await.map_err(stream)?;
        send.write_all(bytes).await.map_err(stream)
    }
}

/// Reads the next frame's length: `None` if the stream ended cleanly before it.
pub async fn read_len(recv: &mut quinn::RecvStream, limit: usize) -> Result<Option<usize>, WireError> {
    let mut header = [0u8; 4];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(WireError::Truncated),
        Err(quinn::ReadExactError::ReadError(e)) => return Err(read_error(e)),
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > limit {
        return Err(WireError::TooLarge { len, limit });
    }
    Ok(Some(len))
}

/// A frame's bytes. A large one lives in its own anonymous memory mapping: a partner decides
/// how large its frames are and when their bytes stop, and what it made this node hold must go
/// back to the operating system the moment the frame is dropped — glibc's allocator keeps freed
/// blocks of this size for reuse (its mmap threshold rises to the largest block freed), so a
/// burst of abandoned 16 MiB frames would otherwise stay resident. Pages of the mapping are
/// only resident once written, so a frame announced and not sent costs what was sent.
pub enum Frame {
    /// A small frame.
    Heap(Vec<u8>),
    /// A large frame, in its own mapping.
    Mapped(memmap2::MmapMut),
}

/// Frames at least this large get their own mapping.
const MAPPED_FROM: usize = 64 * 1024;

impl std::ops::Deref for Frame {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Self::Heap(v) => v,
            Self::Mapped(m) => m,
        }
    }
}

impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frame({} bytes)", self.len())
    }
}

/// Reads a frame body of `len` bytes (announced by [`read_len`]), chunk by chunk as QUIC
/// delivers them; a frame whose bytes stop arriving for `stall` is abandoned.
pub async fn read_body(
    recv: &mut quinn::RecvStream,
    len: usize,
    stall: std::time::Duration,
) -> Result<Frame, WireError> {
    let mut frame = if len >= MAPPED_FROM {
        Frame::Mapped(
            memmap2::MmapMut::map_anon(len).map_err(|e| WireError::Stream(format!("cannot map {len} bytes: {e}")))?,
        )
    } else {
        Frame::Heap(vec![0; len])
    };
    let buf: &mut [u8] = match &mut frame {
        Frame::Heap(v) => v,
        Frame::Mapped(m) => m,
    };
    let mut filled = 0;
    while filled < len {
        let chunk = match tokio::time::timeout(stall, recv.read_chunk(len - filled, true)).await {
            Err(_) => return Err(WireError::Stalled(stall)),
            Ok(Ok(Some(chunk))) => chunk,
            Ok(Ok(None)) => return Err(WireError::Truncated),
            Ok(Err(e)) => return Err(read_error(e)),
        };
        let n = chunk.bytes.len().min(len - filled);
        buf[filled..filled + n].copy_from_slice(&chunk.bytes[..n]);
        filled += n;
    }
    Ok(frame)
}

/// Reads one whole frame: `None` if the stream ended cleanly before it. A frame whose bytes
/// stop arriving for `stall` is abandoned.
pub async fn read_frame(
    recv: &mut quinn::RecvStream,
    limit: usize,
    stall: std::time::Duration,
) -> Result<Option<Frame>, WireError> {
    match read_len(recv, limit).await? {
        None => Ok(None),
        Some(len) => read_body(recv, len, stall).await.map(Some),
    }
}

//! A chunked body (RFC 9112 7.1) checked while it passes through: the
//! bytes are forwarded as they came, up to and including the last chunk's
//! size line, and the decoder only says how many of them may go. Chunk
//! sizes are hex digits only (at most 15), extensions are visible ASCII
//! and bounded, every line ends in CRLF (no bare CR or LF), the data of a
//! chunk is followed by CRLF, and the trailer section is bounded and
//! dropped (the caller ends the body with the empty line itself), as
//! [`super::super::headers::strip_request_trailers`] would leave nothing a
//! backend may trust in it anyway.

/// Most bytes of chunk extensions in one body (hyper allows 16 KiB too).
pub const MAX_EXTENSIONS: usize = 16 * 1024;
/// Most bytes of a trailer section.
pub const MAX_TRAILERS: usize = 16 * 1024;

/// Why a chunked body is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk size line")]
    Size,
    #[error("chunk data not followed by CRLF")]
    DataEnd,
    #[error("chunk extensions larger than {MAX_EXTENSIONS} bytes")]
    Extensions,
    #[error("invalid or oversized trailer section")]
    Trailers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a size line (`digits` so far).
    Size {
        digits: u8,
        size: u64,
    },
    /// Inside the extensions of a size line.
    Ext {
        size: u64,
    },
    /// CR of a size line seen.
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// In the trailer section; `line` bytes into the current line.
    Trailer {
        line: usize,
    },
    /// CR of a trailer line (or of the final empty line) seen.
    TrailerLf {
        line: usize,
    },
    Done,
}

/// The decoder of one chunked body.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
    ext_bytes: usize,
    trailer_bytes: usize,
    /// Data bytes seen so far.
    pub data: u64,
}

/// What [`Chunked::feed`] made of its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// Bytes of the input used.
    pub consumed: usize,
    /// Of those, how many (from the start) are forwarded as they are.
    pub forward: usize,
}

impl Default for Chunked {
    fn default() -> Self {
        Self::new()
    }
}

impl Chunked {
    pub fn new() -> Self {
        Self {
            state: State::Size { digits: 0, size: 0 },
            ext_bytes: 0,
            trailer_bytes: 0,
            data: 0,
        }
    }

    /// Whether the body (trailers included) has ended. The caller then
    /// writes the final CRLF: the trailers were not forwarded.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Feed the next bytes. Stops at the end of the body, and where the
    /// trailer section begins (so `forward` is always a prefix).
    pub fn feed(&mut self, input: &[u8]) -> Result<Fed, ChunkError> {
        let forwarding = !matches!(self.state, State::Trailer { .. } | State::TrailerLf { .. });
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            self.state = match self.state {
                State::Data { left } => {
                    let n = (input.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    i += n;
                    self.data += n as u64;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data { left }
                    };
                    continue;
                }
                State::Size { digits, size } => match hex(b) {
                    Some(d) if digits < 15 => State::Size {
                        digits: digits + 1,
                        size: size << 4 | u64::from(d),
                    },
                    None if digits > 0 && b == b';' => State::Ext { size },
                    None if digits > 0 && b == b'\r' => State::SizeLf { size },
                    _ => return Err(ChunkError::Size),
                },
                State::Ext { size } => {
                    self.ext_bytes += 1;
                    if self.ext_bytes > MAX_EXTENSIONS {
                        return Err(ChunkError::Extensions);
                    }
                    match b {
                        b'\r' => State::SizeLf { size },
                        b'\t' | b' '..=b'~' => State::Ext { size },
                        _ => return Err(ChunkError::Size),
                    }
                }
                State::SizeLf { size } => {
                    if b != b'\n' {
                        return Err(ChunkError::Size);
                    }
                    if size == 0 {
                        // The last chunk: forward its line, then stop.
                        self.state = State::Trailer { line: 0 };
                        i += 1;
                        return Ok(Fed {
                            consumed: i,
                            forward: i,
                        });
                    }
                    State::Data { left: size }
                }
                State::DataCr if b == b'\r' => State::DataLf,
                State::DataLf if b == b'\n' => State::Size { digits: 0, size: 0 },
                State::DataCr | State::DataLf => return Err(ChunkError::DataEnd),
                State::Trailer { line } => {
                    self.trailer_bytes += 1;
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err(ChunkError::Trailers);
                    }
                    match b {
                        b'\r' => State::TrailerLf { line },
                        b'\n' => return Err(ChunkError::Trailers),
                        // obs-fold (a line starting with a blank) is refused
                        b' ' | b'\t' if line == 0 => return Err(ChunkError::Trailers),
                        _ => State::Trailer { line: line + 1 },
                    }
                }
                State::TrailerLf { line } => {
                    if b != b'\n' {
                        return Err(ChunkError::Trailers);
                    }
                    if line == 0 {
                        self.state = State::Done;
                        i += 1;
                        return Ok(Fed {
                            consumed: i,
                            forward: if forwarding { i } else { 0 },
                        });
                    }
                    State::Trailer { line: 0 }
                }
                State::Done => break,
            };
            i += 1;
        }
        Ok(Fed {
            consumed: i,
            forward: if forwarding { i } else { 0 },
        })
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `body` in pieces of `step` bytes; the forwarded bytes (plus
    /// the final CRLF) or the error.
    fn pass(body: &[u8], step: usize) -> Result<Vec<u8>, ChunkError> {
        let mut c = Chunked::new();
        let mut out = Vec::new();
        let mut rest = body;
        while !c.done() && !rest.is_empty() {
            let piece = &rest[..step.min(rest.len())];
            let fed = c.feed(piece)?;
            out.extend_from_slice(&piece[..fed.forward]);
            rest = &rest[fed.consumed..];
        }
        if c.done() {
            out.extend_from_slice(b"\r\n");
            assert!(rest.is_empty() || !rest.is_empty());
        }
        Ok(out)
    }

    #[test]
    fn a_chunked_body_passes_unchanged_in_any_pieces_and_its_trailers_go() {
        let body = b"5\r\nhello\r\n1;name=\"v\"\r\n!\r\n0\r\nX-Forwarded-For: 1.2.3.4\r\nHost: evil\r\n\r\n";
        for step in [1, 2, 3, 7, 100] {
            assert_eq!(
                pass(body, step).unwrap(),
                b"5\r\nhello\r\n1;name=\"v\"\r\n!\r\n0\r\n\r\n",
                "step {step}"
            );
        }
        assert_eq!(
            pass(b"A\r\n0123456789\r\n0\r\n\r\n", 4).unwrap(),
            b"A\r\n0123456789\r\n0\r\n\r\n"
        );
    }

    #[test]
    fn bytes_after_the_body_are_left_for_the_next_message() {
        let mut c = Chunked::new();
        let input = b"0\r\n\r\nGET / HTTP/1.1\r\n";
        let fed = c.feed(input).unwrap();
        assert_eq!(
            fed,
            Fed {
                consumed: 3,
                forward: 3
            }
        );
        let fed2 = c.feed(&input[3..]).unwrap();
        assert_eq!(
            fed2,
            Fed {
                consumed: 2,
                forward: 0
            }
        );
        assert!(c.done());
    }

    #[test]
    fn malformed_chunk_framing_is_refused() {
        for (body, e) in [
            (&b"x\r\n"[..], ChunkError::Size),
            (b"\r\n", ChunkError::Size),
            (b"5\nhello\r\n", ChunkError::Size),
            (b"5 \r\nhello\r\n", ChunkError::Size),
            (b"-5\r\n", ChunkError::Size),
            (b"0x5\r\n", ChunkError::Size),
            (b"1000000000000000\r\n", ChunkError::Size),
            (b"5\r\nhelloX\r\n", ChunkError::DataEnd),
            (b"5\r\nhello\n", ChunkError::DataEnd),
            (b"5;a\x00b\r\n", ChunkError::Size),
            (b"0\r\nX: y\n\r\n", ChunkError::Trailers),
            (b"0\r\nX: y\r\n folded\r\n\r\n", ChunkError::Trailers),
        ] {
            assert_eq!(pass(body, 1), Err(e), "{body:?}");
        }
        let ext = format!("1;{}\r\n", "e".repeat(MAX_EXTENSIONS + 1));
        assert_eq!(pass(ext.as_bytes(), 1000), Err(ChunkError::Extensions));
        let tr = format!("0\r\nX: {}\r\n\r\n", "t".repeat(MAX_TRAILERS));
        assert_eq!(pass(tr.as_bytes(), 1000), Err(ChunkError::Trailers));
    }
}

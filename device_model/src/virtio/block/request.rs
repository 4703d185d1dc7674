//! Parsing a virtio-blk request from a descriptor chain, apart from executing it.
//!
//! A chain is read as a byte stream (any framing is accepted, virtio 1.x §2.6.4): first the
//! device-readable bytes (the 16-byte header, then data for writes, or discard/write-zeroes
//! segments), then the device-writable bytes (data for reads or GET_ID), whose very last byte
//! is the status.
//!
//! Invariants:
//! - [`status_address`] is checked first: without a writable status byte inside guest RAM the
//!   request cannot be answered, only returned with a used length of 0.
//! - Every other violation is a [`RequestError`] whose [`RequestError::status`] is the
//!   answer (`IOERR` or `UNSUPP`); nothing is executed for it.
//! - Every data segment of a parsed request lies inside guest RAM.

use address_space::{ByteValued, GuestMemory};

use crate::virtio::queue::Descriptor;

/// Bytes per sector, whatever the backing file's block size.
pub const SECTOR_SIZE: u64 = 512;
/// Bytes of the serial that `GET_ID` returns.
pub const SERIAL_LEN: usize = 20;
/// Size of the request header.
pub const HEADER_LEN: u64 = 16;
/// Size of one discard / write-zeroes segment.
pub const SEGMENT_LEN: u64 = 16;

/// Request type: read.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Request type: write.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Request type: flush.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Request type: get the serial.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Request type: discard.
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
/// Request type: write zeroes.
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

/// Status: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Status: I/O error (also every malformed request).
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Status: the request type or its flags are not supported.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Segment flag of write-zeroes (and, not supported, of discard): the range may be unmapped.
pub const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: u32 = 1;

/// The request header.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestHeader {
    /// `VIRTIO_BLK_T_*`.
    pub request_type: u32,
    /// Reserved (ioprio in legacy devices).
    pub reserved: u32,
    /// First sector of the transfer.
    pub sector: u64,
}

// SAFETY: `repr(C)` of 4 + 4 + 8 bytes with natural alignment: no padding, all integers.
unsafe impl ByteValued for RequestHeader {}

/// One discard / write-zeroes range.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiscardSegment {
    /// First sector.
    pub sector: u64,
    /// Number of sectors.
    pub num_sectors: u32,
    /// `VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP` or 0.
    pub flags: u32,
}

// SAFETY: `repr(C)` of 8 + 4 + 4 bytes with natural alignment: no padding, all integers.
unsafe impl ByteValued for DiscardSegment {}

/// What the device knows about the disk when it checks a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskLimits {
    /// Size in sectors (0 for an empty slot).
    pub capacity_sectors: u64,
    /// Writes, discards and write-zeroes are refused.
    pub readonly: bool,
    /// The engine carries discards.
    pub discard: bool,
    /// The engine carries write-zeroes.
    pub write_zeroes: bool,
    /// The most sectors one discard / write-zeroes segment may cover.
    pub max_range_sectors: u32,
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Read into the data segments.
    Read,
    /// Write the data segments.
    Write,
    /// Make completed writes durable.
    Flush,
    /// Write the serial into the data segments.
    GetId,
    /// Deallocate a range.
    Discard,
    /// Zero a range.
    WriteZeroes,
}

/// A guest buffer inside guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
}

/// A checked request; its data segments are in the caller's buffer given to [`Request::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The operation.
    pub kind: RequestKind,
    /// Byte offset on the disk (reads, writes, discard, write-zeroes).
    pub offset: u64,
    /// Bytes of data (reads, writes, GET_ID) or of the range (discard, write-zeroes).
    pub len: u64,
    /// Guest address of the status byte.
    pub status: u64,
    /// A write-zeroes that may unmap (`VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`).
    pub unmap: bool,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The chain does not end in a device-writable byte inside guest RAM.
    #[error("no device-writable status byte at the end of the chain")]
    NoStatus,
    /// A device-readable descriptor follows a device-writable one, or data goes the wrong way.
    #[error("descriptor direction does not fit a {kind} request")]
    WrongDirection {
        /// The request type.
        kind: u32,
    },
    /// Fewer than 16 device-readable bytes for the header.
    #[error("header of {len} bytes, expected 16")]
    ShortHeader {
        /// Readable bytes found.
        len: u64,
    },
    /// A descriptor points outside guest RAM.
    #[error("buffer {gpa:#x}+{len:#x} is not inside guest RAM")]
    OutsideRam {
        /// Guest address.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// The data length is not a whole number of sectors.
    #[error("data length {len} is not a multiple of 512")]
    PartialSector {
        /// Bytes of data.
        len: u64,
    },
    /// The transfer reaches past the end of the disk.
    #[error("sectors {sector}+{sectors} are beyond the disk's {capacity} sectors")]
    BeyondEnd {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        sectors: u64,
        /// Capacity in sectors.
        capacity: u64,
    },
    /// A write, discard or write-zeroes to a read-only disk.
    #[error("the disk is read-only")]
    ReadOnly,
    /// A request type the device does not carry.
    #[error("request type {0} is not supported")]
    Unsupported(u32),
    /// Discard / write-zeroes segments: not exactly one, or reserved or unsupported flags.
    #[error("unsupported discard/write-zeroes segments ({bytes} bytes, flags {flags:#x})")]
    BadSegments {
        /// Bytes of segments.
        bytes: u64,
        /// Flags of the first segment.
        flags: u32,
    },
    /// A discard / write-zeroes segment covers more than the advertised maximum.
    #[error("range of {sectors} sectors exceeds the maximum of {max}")]
    RangeTooLong {
        /// Sectors asked for.
        sectors: u32,
        /// The advertised maximum.
        max: u32,
    },
    /// A GET_ID without room for the answer.
    #[error("GET_ID without a device-writable buffer")]
    NoIdBuffer,
}

impl RequestError {
    /// The status byte answering this error.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) | RequestError::BadSegments { .. } => VIRTIO_BLK_S_UNSUPP,
            _ => VIRTIO_BLK_S_IOERR,
        }
    }
}

/// The guest address of the status byte: the last byte of the chain, which must be
/// device-writable and inside guest RAM.
pub fn status_address(chain: &[Descriptor], mem: &GuestMemory) -> Result<u64, RequestError> {
    let last = chain.last().ok_or(RequestError::NoStatus)?;
    if !last.is_write_only() || last.len == 0 {
        return Err(RequestError::NoStatus);
    }
    let gpa = last
        .addr
        .checked_add(u64::from(last.len) - 1)
        .ok_or(RequestError::NoStatus)?;
    if !mem.contains(gpa, 1) {
        return Err(RequestError::NoStatus);
    }
    Ok(gpa)
}

/// The chain's data descriptors as `(gpa, len, writable)`, the status byte left out.
fn pieces(chain: &[Descriptor]) -> impl Iterator<Item = (u64, u64, bool)> + '_ {
    let last = chain.len().saturating_sub(1);
    chain.iter().enumerate().filter_map(move |(i, d)| {
        let len = u64::from(d.len).saturating_sub(u64::from(i == last));
        (len > 0).then_some((d.addr, len, d.is_write_only()))
    })
}

/// Copies `out.len()` readable bytes starting `skip` bytes into the readable stream.
fn read_stream(
    chain: &[Descriptor],
    mem: &GuestMemory,
    mut skip: u64,
    out: &mut [u8],
) -> Result<(), RequestError> {
    let mut done = 0usize;
    for (gpa, len, writable) in pieces(chain) {
        if writable || done == out.len() {
            break;
        }
        if skip >= len {
            skip -= len;
            continue;
        }
        let take = ((len - skip) as usize).min(out.len() - done);
        let at = gpa.wrapping_add(skip);
        mem.read(&mut out[done..done + take], at)
            .map_err(|_| RequestError::OutsideRam {
                gpa: at,
                len: take as u64,
            })?;
        done += take;
        skip = 0;
    }
    Ok(())
}

/// Appends the stream's `writable` pieces, minus the first `skip` bytes, to `out`, checking
/// each lies in guest RAM; returns their total length.
fn collect(
    chain: &[Descriptor],
    mem: &GuestMemory,
    writable: bool,
    mut skip: u64,
    out: &mut Vec<Segment>,
) -> Result<u64, RequestError> {
    let mut total = 0u64;
    for (gpa, len, w) in pieces(chain) {
        if w != writable {
            continue;
        }
        if skip >= len {
            skip -= len;
            continue;
        }
        let seg = Segment {
            gpa: gpa.wrapping_add(skip),
            len: len - skip,
        };
        skip = 0;
        if !mem.contains(seg.gpa, seg.len) {
            return Err(RequestError::OutsideRam {
                gpa: seg.gpa,
                len: seg.len,
            });
        }
        out.push(seg);
        total += seg.len;
    }
    Ok(total)
}

fn check_range(sector: u64, sectors: u64, limits: &DiskLimits) -> Result<(), RequestError> {
    let beyond = RequestError::BeyondEnd {
        sector,
        sectors,
        capacity: limits.capacity_sectors,
    };
    match sector.checked_add(sectors) {
        Some(end) if end <= limits.capacity_sectors && sector <= u64::MAX / SECTOR_SIZE => Ok(()),
        _ => Err(beyond),
    }
}

impl Request {
    /// Checks `chain` (whose status byte is at `status`) against the virtio-blk rules and
    /// `limits`; the data segments are put in `segments` (cleared first).
    pub fn parse(
        chain: &[Descriptor],
        status: u64,
        mem: &GuestMemory,
        limits: &DiskLimits,
        segments: &mut Vec<Segment>,
    ) -> Result<Request, RequestError> {
        segments.clear();
        let (mut readable, mut writable, mut seen_writable) = (0u64, 0u64, false);
        let mut misordered = false;
        for (_, len, w) in pieces(chain) {
            if w {
                writable += len;
                seen_writable = true;
            } else {
                readable += len;
                misordered |= seen_writable;
            }
        }
        if readable < HEADER_LEN {
            return Err(RequestError::ShortHeader { len: readable });
        }
        let mut raw = [0u8; HEADER_LEN as usize];
        read_stream(chain, mem, 0, &mut raw)?;
        let header = RequestHeader {
            request_type: u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]),
            reserved: 0,
            sector: u64::from_le_bytes([
                raw[8], raw[9], raw[10], raw[11], raw[12], raw[13], raw[14], raw[15],
            ]),
        };
        let kind = header.request_type;
        if misordered {
            return Err(RequestError::WrongDirection { kind });
        }
        let extra_readable = readable - HEADER_LEN;
        let request = |kind, offset, len| Request {
            kind,
            offset,
            len,
            status,
            unmap: false,
        };
        match kind {
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
                let write = kind == VIRTIO_BLK_T_OUT;
                let wrong_way = if write { writable } else { extra_readable };
                if wrong_way != 0 {
                    return Err(RequestError::WrongDirection { kind });
                }
                if write && limits.readonly {
                    return Err(RequestError::ReadOnly);
                }
                let len = collect(
                    chain,
                    mem,
                    !write,
                    if write { HEADER_LEN } else { 0 },
                    segments,
                )?;
                if !len.is_multiple_of(SECTOR_SIZE) {
                    return Err(RequestError::PartialSector { len });
                }
                check_range(header.sector, len / SECTOR_SIZE, limits)?;
                let kind = if write {
                    RequestKind::Write
                } else {
                    RequestKind::Read
                };
                Ok(request(kind, header.sector * SECTOR_SIZE, len))
            }
            VIRTIO_BLK_T_FLUSH => Ok(request(RequestKind::Flush, 0, 0)),
            VIRTIO_BLK_T_GET_ID => {
                if extra_readable != 0 {
                    return Err(RequestError::WrongDirection { kind });
                }
                let len = collect(chain, mem, true, 0, segments)?;
                if len == 0 {
                    return Err(RequestError::NoIdBuffer);
                }
                Ok(request(RequestKind::GetId, 0, len))
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                let discard = kind == VIRTIO_BLK_T_DISCARD;
                if !(if discard {
                    limits.discard
                } else {
                    limits.write_zeroes
                }) {
                    return Err(RequestError::Unsupported(kind));
                }
                if writable != 0 {
                    return Err(RequestError::WrongDirection { kind });
                }
                let mut raw = [0u8; SEGMENT_LEN as usize];
                if extra_readable == SEGMENT_LEN {
                    read_stream(chain, mem, HEADER_LEN, &mut raw)?;
                }
                let seg = DiscardSegment {
                    sector: u64::from_le_bytes([
                        raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7],
                    ]),
                    num_sectors: u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]),
                    flags: u32::from_le_bytes([raw[12], raw[13], raw[14], raw[15]]),
                };
                let allowed_flags = if discard {
                    0
                } else {
                    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
                };
                if extra_readable != SEGMENT_LEN || seg.flags & !allowed_flags != 0 {
                    return Err(RequestError::BadSegments {
                        bytes: extra_readable,
                        flags: seg.flags,
                    });
                }
                if limits.readonly {
                    return Err(RequestError::ReadOnly);
                }
                if seg.num_sectors > limits.max_range_sectors {
                    return Err(RequestError::RangeTooLong {
                        sectors: seg.num_sectors,
                        max: limits.max_range_sectors,
                    });
                }
                check_range(seg.sector, u64::from(seg.num_sectors), limits)?;
                let kind = if discard {
                    RequestKind::Discard
                } else {
                    RequestKind::WriteZeroes
                };
                Ok(Request {
                    unmap: seg.flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
                    ..request(
                        kind,
                        seg.sector * SECTOR_SIZE,
                        u64::from(seg.num_sectors) * SECTOR_SIZE,
                    )
                })
            }
            other => Err(RequestError::Unsupported(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::queue::VIRTQ_DESC_F_WRITE;

    const LIMITS: DiskLimits = DiskLimits {
        capacity_sectors: 100,
        readonly: false,
        discard: true,
        write_zeroes: true,
        max_range_sectors: 64,
    };

    fn mem() -> GuestMemory {
        GuestMemory::new(&[(0, 0x10000)]).unwrap()
    }

    fn d(addr: u64, len: u32, write: bool) -> Descriptor {
        Descriptor {
            addr,
            len,
            flags: if write { VIRTQ_DESC_F_WRITE } else { 0 },
            next: 0,
        }
    }

    fn header(mem: &GuestMemory, at: u64, request_type: u32, sector: u64) {
        let h = RequestHeader {
            request_type,
            reserved: 0,
            sector,
        };
        mem.write_obj(&h, at).unwrap();
    }

    fn parse(
        mem: &GuestMemory,
        chain: &[Descriptor],
        limits: &DiskLimits,
    ) -> Result<Request, RequestError> {
        let status = status_address(chain, mem)?;
        Request::parse(chain, status, mem, limits, &mut Vec::new())
    }

    #[test]
    fn read_with_header_data_and_status_in_one_descriptor_each() {
        let mem = mem();
        header(&mem, 0x100, VIRTIO_BLK_T_IN, 3);
        let chain = [
            d(0x100, 16, false),
            d(0x1000, 1024, true),
            d(0x2000, 1, true),
        ];
        let mut segs = Vec::new();
        let req = Request::parse(&chain, 0x2000, &mem, &LIMITS, &mut segs).unwrap();
        assert_eq!(
            (req.kind, req.offset, req.len),
            (RequestKind::Read, 1536, 1024)
        );
        assert_eq!(
            segs,
            [Segment {
                gpa: 0x1000,
                len: 1024
            }]
        );
    }

    #[test]
    fn any_layout_write_with_header_and_data_in_one_descriptor() {
        let mem = mem();
        header(&mem, 0x100, VIRTIO_BLK_T_OUT, 0);
        let chain = [d(0x100, 16 + 512, false), d(0x2000, 1, true)];
        assert_eq!(status_address(&chain, &mem).unwrap(), 0x2000);
        let mut segs = Vec::new();
        let req = Request::parse(&chain, 0x2000, &mem, &LIMITS, &mut segs).unwrap();
        assert_eq!(req.kind, RequestKind::Write);
        assert_eq!(
            segs,
            [Segment {
                gpa: 0x110,
                len: 512
            }]
        );
    }

    #[test]
    fn malformed_requests_are_refused_with_their_status() {
        let mem = mem();
        header(&mem, 0x100, VIRTIO_BLK_T_IN, 99);
        let cases: [(&[Descriptor], RequestError); 5] = [
            (
                &[d(0x100, 16, false), d(0x2000, 1, false)],
                RequestError::NoStatus,
            ),
            (
                &[d(0x100, 8, false), d(0x2000, 1, true)],
                RequestError::ShortHeader { len: 8 },
            ),
            (
                &[
                    d(0x100, 16, false),
                    d(0x1000, 1024, true),
                    d(0x2000, 1, true),
                ],
                RequestError::BeyondEnd {
                    sector: 99,
                    sectors: 2,
                    capacity: 100,
                },
            ),
            (
                &[
                    d(0x100, 16, false),
                    d(0x1000, 512, false),
                    d(0x2000, 1, true),
                ],
                RequestError::WrongDirection { kind: 0 },
            ),
            (
                &[
                    d(0x100, 16, false),
                    d(0xff000, 512, true),
                    d(0x2000, 1, true),
                ],
                RequestError::OutsideRam {
                    gpa: 0xff000,
                    len: 512,
                },
            ),
        ];
        for (chain, expected) in cases {
            assert_eq!(parse(&mem, chain, &LIMITS).unwrap_err(), expected);
        }
        header(&mem, 0x100, VIRTIO_BLK_T_OUT, u64::MAX);
        let chain = [
            d(0x100, 16, false),
            d(0x1000, 512, false),
            d(0x2000, 1, true),
        ];
        assert!(matches!(
            parse(&mem, &chain, &LIMITS),
            Err(RequestError::BeyondEnd { .. })
        ));
        let readonly = DiskLimits {
            readonly: true,
            ..LIMITS
        };
        assert_eq!(
            parse(&mem, &chain, &readonly).unwrap_err(),
            RequestError::ReadOnly
        );
        header(&mem, 0x100, 77, 0);
        let err = parse(&mem, &chain, &LIMITS).unwrap_err();
        assert_eq!(err.status(), VIRTIO_BLK_S_UNSUPP);
    }

    #[test]
    fn write_zeroes_and_discard_segments() {
        let mem = mem();
        header(&mem, 0x100, VIRTIO_BLK_T_WRITE_ZEROES, 0);
        let seg = DiscardSegment {
            sector: 10,
            num_sectors: 8,
            flags: 1,
        };
        mem.write_obj(&seg, 0x110).unwrap();
        let chain = [d(0x100, 32, false), d(0x2000, 1, true)];
        let req = parse(&mem, &chain, &LIMITS).unwrap();
        assert_eq!(
            (req.kind, req.offset, req.len),
            (RequestKind::WriteZeroes, 5120, 4096)
        );
        header(&mem, 0x100, VIRTIO_BLK_T_DISCARD, 0);
        assert_eq!(
            parse(&mem, &chain, &LIMITS).unwrap_err().status(),
            VIRTIO_BLK_S_UNSUPP,
            "unmap flag on discard"
        );
        let no_discard = DiskLimits {
            discard: false,
            ..LIMITS
        };
        assert_eq!(
            parse(&mem, &chain, &no_discard).unwrap_err(),
            RequestError::Unsupported(11)
        );
    }
}

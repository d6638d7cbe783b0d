//! Re-sealing frame crcs, shared by the `frame_decode` and `handshake` targets: mutated inputs
//! get past the crc check to the body checks behind it.

use pagemesh_net::proto::FRAME_HEADER_LEN;

/// Where the crc32c sits in a frame header.
const CRC_OFFSET: usize = 8;

/// Rewrites the crc of every frame header in `bytes` to the crc32c `decode` will compute, over
/// as much of the announced body as the bytes hold.
pub fn reseal(bytes: &mut [u8]) {
    let mut start = 0usize;
    while let Some(header) = bytes.get(start..start + FRAME_HEADER_LEN) {
        let body_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let body_start = start + FRAME_HEADER_LEN;
        let body_end = body_start.saturating_add(body_len).min(bytes.len());
        let crc = crc32c::crc32c_append(
            crc32c::crc32c(&bytes[start..start + CRC_OFFSET]),
            &bytes[body_start..body_end],
        );
        bytes[start + CRC_OFFSET..body_start].copy_from_slice(&crc.to_le_bytes());
        start = body_start.saturating_add(body_len);
    }
}

//! The archive's ZIP format, written as a stream (PKWARE APPNOTE 6.3): stored entries, each a
//! local header, its bytes as they come, and a data descriptor (sizes and CRC are known only at
//! the end); ZIP64 where a size, an offset or the number of entries needs it.
//!
//! The central directory is what a ZIP reader reads first, and it goes last. Its records are
//! spooled to an unlinked temporary file as entries end and copied out at the end, so an archive
//! of 100,000 recordings holds none of their headers in memory (rawzip, used before, kept about
//! 350 bytes a file: 35 MB for 100,000). This module only frames bytes; the caller moves them.
use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, Datelike, Timelike, Utc};
use tokio::io::{AsyncSeekExt, AsyncWriteExt, BufWriter};

const LOCAL_HEADER: u32 = 0x0403_4b50;
const DATA_DESCRIPTOR: u32 = 0x0807_4b50;
const CENTRAL_HEADER: u32 = 0x0201_4b50;
const END_OF_CENTRAL_DIRECTORY: u32 = 0x0605_4b50;
const ZIP64_END_OF_CENTRAL_DIRECTORY: u32 = 0x0606_4b50;
const ZIP64_LOCATOR: u32 = 0x0706_4b50;
/// Version 2.0 (stored entries, data descriptors); 4.5 for ZIP64.
const VERSION: u16 = 20;
const VERSION_ZIP64: u16 = 45;
/// General purpose flags: bit 3, sizes and CRC in a data descriptor; bit 11, a UTF-8 name.
const FLAG_DATA_DESCRIPTOR: u16 = 1 << 3;
const FLAG_UTF8: u16 = 1 << 11;
/// Sizes and offsets at or past this are ZIP64's (the 32-bit field then holds this value).
const MAX32: u64 = 0xFFFF_FFFF;
const MAX_ENTRIES16: u64 = 0xFFFF;
const EXTRA_ZIP64: u16 = 0x0001;
const EXTRA_TIMESTAMP: u16 = 0x5455;

/// A ZIP being written: where the stream is, and the central directory spooled so far.
pub struct ZipStream {
    written: u64,
    entries: u64,
    central: BufWriter<tokio::fs::File>,
    central_len: u64,
    open: Option<OpenEntry>,
}

struct OpenEntry {
    name: Vec<u8>,
    offset: u64,
    modified: DateTime<Utc>,
}

impl ZipStream {
    /// A new archive; its central directory spools to an unlinked temporary file.
    pub async fn new() -> std::io::Result<Self> {
        let file = crate::files::spool_file().await?;
        Ok(Self { written: 0, entries: 0, central: BufWriter::new(file), central_len: 0, open: None })
    }

    /// Starts an entry: its local header, to write before its bytes.
    pub fn start(&mut self, name: &str, modified: DateTime<Utc>) -> std::io::Result<Bytes> {
        if self.open.is_some() {
            return Err(std::io::Error::other("a ZIP entry is still open"));
        }
        let name = name.as_bytes().to_vec();
        let name_len =
            u16::try_from(name.len()).map_err(|_| std::io::Error::other("a ZIP entry name too long"))?;
        let (time, date) = dos_time(modified);
        let mut h = BytesMut::with_capacity(30 + name.len());
        h.put_u32_le(LOCAL_HEADER);
        h.put_u16_le(VERSION);
        h.put_u16_le(flags(&name));
        h.put_u16_le(0); // stored
        h.put_u16_le(time);
        h.put_u16_le(date);
        h.put_u32_le(0); // CRC, sizes: in the data descriptor
        h.put_u32_le(0);
        h.put_u32_le(0);
        h.put_u16_le(name_len);
        h.put_u16_le(0); // no extra fields
        h.put_slice(&name);
        self.open = Some(OpenEntry { name, offset: self.written, modified });
        self.written += h.len() as u64;
        Ok(h.freeze())
    }

    /// Ends the open entry, whose `size` bytes with this CRC-32 were written after its header:
    /// its data descriptor, to write next. Its central directory record goes to the spool.
    pub async fn end(&mut self, crc: u32, size: u64) -> std::io::Result<Bytes> {
        let entry = self.open.take().ok_or_else(|| std::io::Error::other("no ZIP entry is open"))?;
        self.written += size;
        let mut d = BytesMut::with_capacity(24);
        d.put_u32_le(DATA_DESCRIPTOR);
        d.put_u32_le(crc);
        if size >= MAX32 {
            d.put_u64_le(size);
            d.put_u64_le(size);
        } else {
            d.put_u32_le(size as u32);
            d.put_u32_le(size as u32);
        }
        self.written += d.len() as u64;

        // ZIP64 fields, in the order the format gives: uncompressed size, compressed size, offset.
        let mut zip64 = BytesMut::new();
        if size >= MAX32 {
            zip64.put_u64_le(size);
            zip64.put_u64_le(size);
        }
        if entry.offset >= MAX32 {
            zip64.put_u64_le(entry.offset);
        }
        let (time, date) = dos_time(entry.modified);
        let mut c = BytesMut::with_capacity(46 + entry.name.len() + 9 + 4 + zip64.len());
        c.put_u32_le(CENTRAL_HEADER);
        let version = if zip64.is_empty() { VERSION } else { VERSION_ZIP64 };
        c.put_u16_le(version); // made by: MS-DOS (0), this version
        c.put_u16_le(version);
        c.put_u16_le(flags(&entry.name));
        c.put_u16_le(0);
        c.put_u16_le(time);
        c.put_u16_le(date);
        c.put_u32_le(crc);
        c.put_u32_le(size.min(MAX32) as u32);
        c.put_u32_le(size.min(MAX32) as u32);
        c.put_u16_le(entry.name.len() as u16);
        let extra_len = 9 + if zip64.is_empty() { 0 } else { 4 + zip64.len() };
        c.put_u16_le(extra_len as u16);
        c.put_u16_le(0); // comment
        c.put_u16_le(0); // disk
        c.put_u16_le(0); // internal attributes
        c.put_u32_le(0); // external attributes
        c.put_u32_le(entry.offset.min(MAX32) as u32);
        c.put_slice(&entry.name);
        // Extended timestamp: the modification time in Unix seconds (DOS time has 2 s steps).
        c.put_u16_le(EXTRA_TIMESTAMP);
        c.put_u16_le(5);
        c.put_u8(1);
        c.put_u32_le(entry.modified.timestamp().clamp(0, i64::from(u32::MAX)) as u32);
        if !zip64.is_empty() {
            c.put_u16_le(EXTRA_ZIP64);
            c.put_u16_le(zip64.len() as u16);
            c.put_slice(&zip64);
        }
        self.central.write_all(&c).await?;
        self.central_len += c.len() as u64;
        self.entries += 1;
        Ok(d.freeze())
    }

    /// Ends the archive: the spooled central directory (to copy out as it is, from its start),
    /// then the end records to write after it.
    pub async fn finish(mut self) -> std::io::Result<(tokio::fs::File, Bytes)> {
        if self.open.is_some() {
            return Err(std::io::Error::other("a ZIP entry is still open"));
        }
        self.central.flush().await?;
        let mut central = self.central.into_inner();
        central.rewind().await?;
        let (offset, size, entries) = (self.written, self.central_len, self.entries);
        let mut e = BytesMut::with_capacity(22 + 56 + 20);
        if entries >= MAX_ENTRIES16 || offset >= MAX32 || size >= MAX32 {
            let zip64_at = offset + size;
            e.put_u32_le(ZIP64_END_OF_CENTRAL_DIRECTORY);
            e.put_u64_le(44); // the record's size after this field
            e.put_u16_le(VERSION_ZIP64);
            e.put_u16_le(VERSION_ZIP64);
            e.put_u32_le(0);
            e.put_u32_le(0);
            e.put_u64_le(entries);
            e.put_u64_le(entries);
            e.put_u64_le(size);
            e.put_u64_le(offset);
            e.put_u32_le(ZIP64_LOCATOR);
            e.put_u32_le(0);
            e.put_u64_le(zip64_at);
            e.put_u32_le(1);
        }
        e.put_u32_le(END_OF_CENTRAL_DIRECTORY);
        e.put_u16_le(0);
        e.put_u16_le(0);
        e.put_u16_le(entries.min(MAX_ENTRIES16) as u16);
        e.put_u16_le(entries.min(MAX_ENTRIES16) as u16);
        e.put_u32_le(size.min(MAX32) as u32);
        e.put_u32_le(offset.min(MAX32) as u32);
        e.put_u16_le(0); // comment
        Ok((central, e.freeze()))
    }
}

fn flags(name: &[u8]) -> u16 {
    if name.is_ascii() {
        FLAG_DATA_DESCRIPTOR
    } else {
        FLAG_DATA_DESCRIPTOR | FLAG_UTF8
    }
}

/// MS-DOS time and date (2-second steps, 1980 to 2107).
fn dos_time(t: DateTime<Utc>) -> (u16, u16) {
    if t.year() < 1980 {
        return (0, (1 << 5) | 1);
    }
    let year = (t.year() - 1980).min(127) as u16;
    let time = ((t.hour() as u16) << 11) | ((t.minute() as u16) << 5) | (t.second() as u16 / 2);
    let date = (year << 9) | ((t.month() as u16) << 5) | t.day() as u16;
    (time, date)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use tokio::io::AsyncReadExt;

    use super::*;

    /// Writes entries into memory the way the archive does, then reads them back with rawzip
    /// (another implementation of the format), each entry's CRC checked.
    async fn zip_of(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
        let mut zip = ZipStream::new().await.unwrap();
        let mut out = Vec::new();
        let when = DateTime::parse_from_rfc3339("2026-12-02T10:20:31Z").unwrap().with_timezone(&Utc);
        for (name, data) in entries {
            out.extend_from_slice(&zip.start(name, when).unwrap());
            out.extend_from_slice(data);
            let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32IsoHdlc, data) as u32;
            out.extend_from_slice(&zip.end(crc, data.len() as u64).await.unwrap());
        }
        let (mut central, tail) = zip.finish().await.unwrap();
        central.read_to_end(&mut out).await.unwrap();
        out.extend_from_slice(&tail);
        out
    }

    fn read_back(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
        let zip = rawzip::ZipArchive::from_slice(archive).expect("a ZIP archive");
        let mut entries = zip.entries();
        let mut files = Vec::new();
        while let Some(entry) = entries.next_entry().expect("an entry") {
            let name = entry.file_path().try_normalize().expect("a safe path").as_ref().to_owned();
            let local = zip.get_entry(entry.wayfinder()).expect("its local header");
            let mut data = Vec::new();
            local.verifying_reader(local.data()).read_to_end(&mut data).expect("its bytes, CRC checked");
            files.push((name, data));
        }
        files
    }

    #[tokio::test]
    async fn entries_read_back_whole_with_another_reader() {
        let entries: Vec<(String, Vec<u8>)> = vec![
            ("calls.json".into(), b"[{\"id\": 1}]\n".to_vec()),
            ("recordings/c1.wav".into(), (0..70_000u32).map(|i| (i % 251) as u8).collect()),
            ("empty.json".into(), Vec::new()),
            ("caf\u{e9}.txt".into(), b"utf-8 name".to_vec()),
        ];
        let archive = zip_of(&entries).await;
        assert_eq!(read_back(&archive), entries);
        assert_eq!(
            dos_time(DateTime::parse_from_rfc3339("2026-12-02T10:20:31Z").unwrap().into()),
            ((10 << 11) | (20 << 5) | 15, (46 << 9) | (12 << 5) | 2)
        );
    }

    /// 70,000 entries: more than 16 bits count, so the ZIP64 end records carry the number.
    #[tokio::test]
    async fn more_entries_than_sixteen_bits_count_use_zip64_end_records() {
        let entries: Vec<(String, Vec<u8>)> =
            (0..70_000).map(|i| (format!("r/{i}.wav"), format!("{i}").into_bytes())).collect();
        let archive = zip_of(&entries).await;
        let tail = &archive[archive.len() - 22 - 20 - 56..];
        assert_eq!(&tail[..4], &ZIP64_END_OF_CENTRAL_DIRECTORY.to_le_bytes());
        assert_eq!(read_back(&archive), entries);
    }
}

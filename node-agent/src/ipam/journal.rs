//! The write-ahead journal of the node's address allocations.
//!
//! One JSON record per line, appended and `fdatasync`ed before an address is used, so that
//! after a crash at any point the journal says every address that may be in use. A torn last
//! line (the crash hit mid-write) is dropped on open: its record was never synced, so no
//! CNI result can have mentioned it. The file is compacted (rewritten to the live records,
//! temp + fsync + rename + directory fsync) when it has grown far past the live set.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Allocation, IpamError};
use crate::durable::{self, DurableError};

/// One journal line.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Record {
    /// An address is (about to be) in use.
    Alloc(Allocation),
    /// An address is free again.
    Free {
        /// Network of the address.
        network: String,
        /// The freed address.
        ip: std::net::IpAddr,
    },
}

/// The open journal: the append-only file, locked against a second agent.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    /// Held for the journal's lifetime: a second agent on the same state directory (a
    /// DaemonSet rollout overlapping the old pod) would hand out addresses twice.
    _lock: nix::fcntl::Flock<File>,
    /// Records in the file, to decide when to compact.
    records: usize,
}

/// File name of the journal inside the IPAM directory.
pub const FILE_NAME: &str = "allocations.jsonl";

impl Journal {
    /// Opens (creating) the journal in `dir` and returns it with every record, in order.
    pub fn open(dir: &Path) -> Result<(Self, Vec<Record>), IpamError> {
        fs::create_dir_all(dir).map_err(|e| IpamError::io("create", dir, e))?;
        let lock_path = dir.join("lock");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| IpamError::io("open", &lock_path, e))?;
        let lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| IpamError::Locked {
                path: lock_path.clone(),
                source: std::io::Error::from(errno),
            })?;
        let path = dir.join(FILE_NAME);
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| IpamError::io("open", &path, e))?;
        if !existed {
            durable::sync_dir(dir)?;
        }
        let mut text = Vec::new();
        file.read_to_end(&mut text)
            .map_err(|e| IpamError::io("read", &path, e))?;
        let mut records = Vec::new();
        let mut good_len = 0usize;
        let mut offset = 0usize;
        for line in text.split_inclusive(|b| *b == b'\n') {
            offset += line.len();
            let complete = line.ends_with(b"\n");
            let body = line.strip_suffix(b"\n").unwrap_or(line);
            if body.iter().all(u8::is_ascii_whitespace) {
                if complete {
                    good_len = offset;
                }
                continue;
            }
            match serde_json::from_slice::<Record>(body) {
                Ok(record) if complete => {
                    records.push(record);
                    good_len = offset;
                }
                // Only the tail can be torn; anything else is damage we must not paper over,
                // because skipping an `alloc` could hand its address out twice.
                _ if offset == text.len() => break,
                Ok(_) | Err(_) => {
                    return Err(IpamError::Corrupt {
                        path: path.clone(),
                        offset: offset - line.len(),
                    });
                }
            }
        }
        if good_len < text.len() {
            tracing::warn!(path = %path.display(), dropped = text.len() - good_len,
                "dropping a torn last record of the IPAM journal (crash during write)");
            file.set_len(good_len as u64)
                .and_then(|()| file.sync_data())
                .map_err(|e| IpamError::io("truncate", &path, e))?;
        }
        file.seek(SeekFrom::End(0))
            .map_err(|e| IpamError::io("seek", &path, e))?;
        let count = records.len();
        Ok((
            Self {
                path,
                file,
                _lock: lock,
                records: count,
            },
            records,
        ))
    }

    /// Appends records and makes them durable before returning.
    pub fn append(&mut self, records: &[Record]) -> Result<(), IpamError> {
        self.write(records, true)
    }

    /// Appends records without waiting for the disk: in the page cache they outlive the
    /// agent's process, not the machine. Only for records whose loss in a machine crash is
    /// harmless (a later synced append or compaction makes them durable too; until then a
    /// reader finds the earlier record of the same address).
    pub fn append_unsynced(&mut self, records: &[Record]) -> Result<(), IpamError> {
        self.write(records, false)
    }

    fn write(&mut self, records: &[Record], sync: bool) -> Result<(), IpamError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(256 * records.len());
        for record in records {
            serde_json::to_writer(&mut buf, record).map_err(IpamError::Encode)?;
            buf.push(b'\n');
        }
        self.file
            .write_all(&buf)
            .and_then(|()| if sync { self.file.sync_data() } else { Ok(()) })
            .map_err(|e| IpamError::io("append", &self.path, e))?;
        self.records += records.len();
        Ok(())
    }

    /// Whether the file is worth compacting given `live` allocations.
    pub fn wants_compaction(&self, live: usize) -> bool {
        self.records > 1024 && self.records > 4 * live.max(1)
    }

    /// Rewrites the journal to exactly `live`, atomically.
    pub fn compact<'a>(
        &mut self,
        live: impl Iterator<Item = &'a Allocation>,
    ) -> Result<(), IpamError> {
        let tmp = self.path.with_extension("jsonl.tmp");
        let mut buf = Vec::new();
        let mut count = 0;
        for alloc in live {
            serde_json::to_writer(&mut buf, &Record::Alloc(alloc.clone()))
                .map_err(IpamError::Encode)?;
            buf.push(b'\n');
            count += 1;
        }
        durable::replace(&self.path, &tmp, &buf, None)?;
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| IpamError::io("reopen", &self.path, e))?;
        self.records = count;
        Ok(())
    }
}

impl From<DurableError> for IpamError {
    fn from(e: DurableError) -> Self {
        IpamError::Io {
            op: e.op,
            path: e.path,
            source: e.source,
        }
    }
}

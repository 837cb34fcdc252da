//! The records a coordinator writes to its partition of
//! `__consumer_offsets`: a key and a value (null: a tombstone), both in a
//! versioned big-endian encoding of our own, described byte by byte in
//! docs/format.md ("Consumer group records"). Keys are built so that the
//! latest record per key is the state (what compaction, issue 7, keeps).

use spate_format::batch::BatchBuilder;

/// The version byte every key and value starts with.
const KEY_VERSION: u8 = 0;
const VALUE_VERSION: u8 = 0;
const TYPE_OFFSET: u8 = 1;
const TYPE_GROUP: u8 = 2;

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GroupRecord {
    /// A committed offset; `None` deletes it.
    Offset { group: String, topic: String, partition: i32, offset: Option<i64> },
    /// A group's epoch and assignor; `None` deletes the group.
    Group { group: String, meta: Option<GroupMeta> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupMeta {
    pub epoch: i32,
    pub assignor: String,
    /// Members when the record was written, and the longest of their
    /// session timeouts: a coordinator that loads the group later knows
    /// that many may come back within that long (members themselves are
    /// soft state). Appended after the assignor, which readers before them
    /// ignore; a value without them reads as 0 and 0.
    pub members: u32,
    pub session_timeout_ms_max: u32,
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    // Group ids, topic names and assignor names are at most 249 bytes.
    debug_assert!(text.len() <= usize::from(u16::MAX));
    out.extend_from_slice(&(text.len() as u16).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

impl GroupRecord {
    pub(crate) fn key(&self) -> Vec<u8> {
        let mut key = vec![KEY_VERSION];
        match self {
            GroupRecord::Offset { group, topic, partition, .. } => {
                key.push(TYPE_OFFSET);
                put_str(&mut key, group);
                put_str(&mut key, topic);
                key.extend_from_slice(&partition.to_be_bytes());
            }
            GroupRecord::Group { group, .. } => {
                key.push(TYPE_GROUP);
                put_str(&mut key, group);
            }
        }
        key
    }

    pub(crate) fn value(&self) -> Option<Vec<u8>> {
        match self {
            GroupRecord::Offset { offset, .. } => offset.map(|offset| {
                let mut value = vec![VALUE_VERSION];
                value.extend_from_slice(&offset.to_be_bytes());
                value
            }),
            GroupRecord::Group { meta, .. } => meta.as_ref().map(|meta| {
                let mut value = vec![VALUE_VERSION];
                value.extend_from_slice(&meta.epoch.to_be_bytes());
                put_str(&mut value, &meta.assignor);
                value.extend_from_slice(&meta.members.to_be_bytes());
                value.extend_from_slice(&meta.session_timeout_ms_max.to_be_bytes());
                value
            }),
        }
    }

    /// Reads a record back; an unknown version or a malformed key or value
    /// is an error (never a panic), which stops the coordinator's load.
    pub(crate) fn decode(key: &[u8], value: Option<&[u8]>) -> Result<GroupRecord, String> {
        let mut key = Reader(key);
        let version = key.u8()?;
        if version != KEY_VERSION {
            return Err(format!("unknown key version {version}"));
        }
        let kind = key.u8()?;
        let group = key.string()?;
        let record = match kind {
            TYPE_OFFSET => {
                let topic = key.string()?;
                let partition = i32::from_be_bytes(key.array()?);
                let offset = match value {
                    None => None,
                    Some(value) => {
                        let mut value = Reader(value);
                        value.version()?;
                        let offset = i64::from_be_bytes(value.array()?);
                        if offset < 0 {
                            return Err(format!("negative committed offset {offset}"));
                        }
                        Some(offset)
                    }
                };
                GroupRecord::Offset { group, topic, partition, offset }
            }
            TYPE_GROUP => {
                let meta = match value {
                    None => None,
                    Some(value) => {
                        let mut value = Reader(value);
                        value.version()?;
                        let epoch = i32::from_be_bytes(value.array()?);
                        let assignor = value.string()?;
                        // Written by a broker before the membership fields.
                        let (members, session_timeout_ms_max) = if value.0.is_empty() {
                            (0, 0)
                        } else {
                            (u32::from_be_bytes(value.array()?), u32::from_be_bytes(value.array()?))
                        };
                        Some(GroupMeta { epoch, assignor, members, session_timeout_ms_max })
                    }
                };
                GroupRecord::Group { group, meta }
            }
            other => return Err(format!("unknown record type {other}")),
        };
        if !key.0.is_empty() {
            return Err(format!("{} stray bytes after the key", key.0.len()));
        }
        Ok(record)
    }
}

/// A batch of records, timestamped now, ready to append.
pub(crate) fn batch(records: &[GroupRecord], now_ms: i64) -> bytes::BytesMut {
    let mut builder = BatchBuilder::new(now_ms);
    for record in records {
        builder.push(now_ms, Some(&record.key()), record.value().as_deref(), &[]);
    }
    builder.build()
}

/// Reads a coordinator record's big-endian fields (groups' and
/// transactions' records share the encoding), every read bounded.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl Reader<'_> {
    pub(crate) fn take(&mut self, bytes: usize) -> Result<&[u8], String> {
        if self.0.len() < bytes {
            return Err(format!("record cut short: {} bytes where {bytes} were needed", self.0.len()));
        }
        let (head, rest) = self.0.split_at(bytes);
        self.0 = rest;
        Ok(head)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    pub(crate) fn string(&mut self) -> Result<String, String> {
        let len = u16::from_be_bytes(self.array()?);
        let bytes = self.take(usize::from(len))?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a name is not UTF-8".to_string())
    }
    fn version(&mut self) -> Result<(), String> {
        match self.u8()? {
            VALUE_VERSION => Ok(()),
            other => Err(format!("unknown value version {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_tombstones_stay_tombstones() {
        let records = [
            GroupRecord::Offset { group: "g".into(), topic: "orders".into(), partition: 7, offset: Some(42) },
            GroupRecord::Offset { group: "g".into(), topic: "orders".into(), partition: 7, offset: None },
            GroupRecord::Group {
                group: "g".into(),
                meta: Some(GroupMeta {
                    epoch: 9,
                    assignor: "sticky".into(),
                    members: 2,
                    session_timeout_ms_max: 45_000,
                }),
            },
            GroupRecord::Group { group: "g".into(), meta: None },
        ];
        for record in &records {
            let decoded = GroupRecord::decode(&record.key(), record.value().as_deref()).expect("decodes");
            assert_eq!(&decoded, record);
        }
        // The byte layout docs/format.md shows.
        assert_eq!(records[0].key(), b"\x00\x01\x00\x01g\x00\x06orders\x00\x00\x00\x07");
        assert_eq!(records[0].value().expect("value"), b"\x00\x00\x00\x00\x00\x00\x00\x00\x2a");
        assert_eq!(
            records[2].value().expect("value"),
            b"\x00\x00\x00\x00\x09\x00\x06sticky\x00\x00\x00\x02\x00\x00\xaf\xc8"
        );
    }

    #[test]
    fn a_group_value_from_before_the_membership_fields_reads_as_no_members() {
        let key = GroupRecord::Group { group: "g".into(), meta: None }.key();
        let decoded = GroupRecord::decode(&key, Some(b"\x00\x00\x00\x00\x09\x00\x05range")).expect("decodes");
        let meta = GroupMeta { epoch: 9, assignor: "range".into(), members: 0, session_timeout_ms_max: 0 };
        assert_eq!(decoded, GroupRecord::Group { group: "g".into(), meta: Some(meta) });
        // Cut inside the new fields: damage, not an older writer.
        assert!(GroupRecord::decode(&key, Some(b"\x00\x00\x00\x00\x09\x00\x05range\x00\x00")).is_err());
    }

    #[test]
    fn malformed_records_are_errors() {
        let good = GroupRecord::Offset { group: "g".into(), topic: "t".into(), partition: 0, offset: Some(1) };
        let key = good.key();
        for cut in 0..key.len() {
            assert!(GroupRecord::decode(&key[..cut], None).is_err(), "key cut at {cut}");
        }
        let mut future = key.clone();
        future[0] = 1;
        assert!(GroupRecord::decode(&future, None).is_err());
        assert!(GroupRecord::decode(&key, Some(b"\x00\x01")).is_err());
        assert!(GroupRecord::decode(&key, Some(b"\x07\x00\x00\x00\x00\x00\x00\x00\x01")).is_err());
        let mut long = key;
        long.push(0);
        assert!(GroupRecord::decode(&long, None).is_err());
    }
}

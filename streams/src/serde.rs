//! Serdes: how keys and values become bytes and back, as Kafka Streams'
//! `Serde<T>`. A record's key or value may be absent (Kafka's null); a serde
//! sees that as `None`. The ready serdes refuse a null (it is not a value of
//! their type); wrap one in [`Serdes::nullable`] to read nulls as `None`.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Bytes;

/// Why bytes could not become a value, or a value bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SerdeError {
    /// The data was null where the serde needs a value.
    #[error("null data on topic {topic:?}; read a nullable field with Serdes::nullable")]
    Null { topic: String },
    /// The data had the wrong length for a fixed-size type.
    #[error("{type_name} needs {expected_bytes} bytes, got {actual_bytes} (topic {topic:?})")]
    Size { topic: String, type_name: &'static str, expected_bytes: usize, actual_bytes: usize },
    /// The bytes are not valid for the type (bad UTF-8, bad JSON, ...).
    #[error("cannot read {type_name} from topic {topic:?}: {reason}")]
    Invalid { topic: String, type_name: &'static str, reason: String },
}

/// Turns values of `T` into record bytes and back. `topic` is where the
/// bytes come from or go to (Kafka passes it too; most serdes ignore it).
pub trait Serde<T>: Send + Sync {
    /// `None` writes a null (a tombstone, for a value).
    fn serialize(&self, topic: &str, data: &T) -> Result<Option<Bytes>, SerdeError>;
    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> Result<T, SerdeError>;
}

/// A shared serde, as topologies hold them (one per task would be waste).
pub type SerdeRef<T> = Arc<dyn Serde<T>>;

impl<T, S: Serde<T> + ?Sized> Serde<T> for Arc<S> {
    fn serialize(&self, topic: &str, data: &T) -> Result<Option<Bytes>, SerdeError> {
        (**self).serialize(topic, data)
    }
    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> Result<T, SerdeError> {
        (**self).deserialize(topic, data)
    }
}

fn present<'a>(topic: &str, data: Option<&'a [u8]>) -> Result<&'a [u8], SerdeError> {
    data.ok_or_else(|| SerdeError::Null { topic: topic.to_string() })
}

/// The ready serdes, as Kafka's `Serdes` class.
#[derive(Debug)]
pub struct Serdes;

impl Serdes {
    pub fn bytes() -> SerdeRef<Bytes> {
        Arc::new(BytesSerde)
    }
    /// UTF-8, as Kafka's `Serdes.String()`.
    pub fn string() -> SerdeRef<String> {
        Arc::new(StringSerde)
    }
    /// 4 bytes big-endian, as Kafka's `Serdes.Integer()`.
    pub fn i32() -> SerdeRef<i32> {
        Arc::new(I32Serde)
    }
    /// 8 bytes big-endian, as Kafka's `Serdes.Long()`.
    pub fn i64() -> SerdeRef<i64> {
        Arc::new(I64Serde)
    }
    /// 8 bytes big-endian (Java has no unsigned long; the bytes are those
    /// of `Serdes.Long()` for values up to `i64::MAX`).
    pub fn u64() -> SerdeRef<u64> {
        Arc::new(U64Serde)
    }
    /// JSON through serde_json, for any serde type.
    pub fn json<T>() -> SerdeRef<T>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + 'static,
    {
        Arc::new(JsonSerde(PhantomData))
    }
    /// A list of values, each as `inner` writes it (Kafka's `ListSerde`
    /// layout for variable-size entries: the count, then each entry's
    /// length and bytes, all lengths 4 bytes big-endian).
    pub fn list<T: 'static>(inner: SerdeRef<T>) -> SerdeRef<Vec<T>> {
        Arc::new(ListSerde(inner))
    }

    /// Reads a null as `None` and writes `None` as a null.
    pub fn nullable<T: 'static>(inner: SerdeRef<T>) -> SerdeRef<Option<T>> {
        Arc::new(Nullable(inner))
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct BytesSerde;

impl Serde<Bytes> for BytesSerde {
    fn serialize(&self, _topic: &str, data: &Bytes) -> Result<Option<Bytes>, SerdeError> {
        Ok(Some(data.clone()))
    }
    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> Result<Bytes, SerdeError> {
        Ok(Bytes::copy_from_slice(present(topic, data)?))
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct StringSerde;

impl Serde<String> for StringSerde {
    fn serialize(&self, _topic: &str, data: &String) -> Result<Option<Bytes>, SerdeError> {
        Ok(Some(Bytes::copy_from_slice(data.as_bytes())))
    }
    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> Result<String, SerdeError> {
        let bytes = present(topic, data)?;
        String::from_utf8(bytes.to_vec()).map_err(|error| SerdeError::Invalid {
            topic: topic.to_string(),
            type_name: "String",
            reason: error.to_string(),
        })
    }
}

fn fixed<const N: usize>(topic: &str, data: Option<&[u8]>, type_name: &'static str) -> Result<[u8; N], SerdeError> {
    let bytes = present(topic, data)?;
    <[u8; N]>::try_from(bytes).map_err(|_| SerdeError::Size {
        topic: topic.to_string(),
        type_name,
        expected_bytes: N,
        actual_bytes: bytes.len(),
    })
}

#[derive(Debug, Clone, Copy, Default)]
pub struct I32Serde;

impl Serde<i32> for I32Serde {
    fn serialize(&self, _topic: &str, data: &i32) -> Result<Option<Bytes>, SerdeError> {
        Ok(Some(Bytes::copy_from_slice(&data.to_be_bytes())))
    }
    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> Result<i32, SerdeError> {
        Ok(i32::from_be_bytes(fixed(topic, data, "i32")?))
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct I64Serde;

impl Serde<i64> for I64Serde {
    fn serialize(&self, _topic: &str, data: &i64) -> Result<Option<Bytes>, SerdeError> {
        Ok(Some(Bytes::copy_from_slice(&data.to_be_bytes())))
    }
    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> Result<i64, SerdeError> {
        Ok(i64::from_be_bytes(fixed(topic, data, "i64")?))
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct U64Serde;

impl Serde<u64> for U64Serde {
    fn serialize(&self, _topic: &str, data: &u64) -> Result<Option<Bytes>, SerdeError> {
        Ok(Some(Bytes::copy_from_slice(&data.to_be_bytes())))
    }
    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> Result<u64, SerdeError> {
        Ok(u64::from_be_bytes(fixed(topic, data, "u64")?))
    }
}

pub struct JsonSerde<T>(PhantomData<fn() -> T>);

impl<T> fmt::Debug for JsonSerde<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JsonSerde")
    }
}

impl<T> Serde<T> for JsonSerde<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    fn serialize(&self, topic: &str, data: &T) -> Result<Option<Bytes>, SerdeError> {
        serde_json::to_vec(data).map(|bytes| Some(Bytes::from(bytes))).map_err(|error| SerdeError::Invalid {
            topic: topic.to_string(),
            type_name: std::any::type_name::<T>(),
            reason: error.to_string(),
        })
    }
    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> Result<T, SerdeError> {
        serde_json::from_slice(present(topic, data)?).map_err(|error| SerdeError::Invalid {
            topic: topic.to_string(),
            type_name: std::any::type_name::<T>(),
            reason: error.to_string(),
        })
    }
}

pub struct ListSerde<T>(SerdeRef<T>);

impl<T> fmt::Debug for ListSerde<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ListSerde")
    }
}

impl<T> Serde<Vec<T>> for ListSerde<T> {
    fn serialize(&self, topic: &str, data: &Vec<T>) -> Result<Option<Bytes>, SerdeError> {
        let too_long = |what: &str| SerdeError::Invalid {
            topic: topic.to_string(),
            type_name: "List",
            reason: format!("{what} does not fit in 4 bytes"),
        };
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&u32::try_from(data.len()).map_err(|_| too_long("the count"))?.to_be_bytes());
        for entry in data {
            let entry = self.0.serialize(topic, entry)?.ok_or_else(|| SerdeError::Null { topic: topic.to_string() })?;
            bytes.extend_from_slice(&u32::try_from(entry.len()).map_err(|_| too_long("an entry"))?.to_be_bytes());
            bytes.extend_from_slice(&entry);
        }
        Ok(Some(Bytes::from(bytes)))
    }

    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> Result<Vec<T>, SerdeError> {
        let mut rest = present(topic, data)?;
        let take = |rest: &mut &[u8], count: usize| -> Result<Vec<u8>, SerdeError> {
            if rest.len() < count {
                return Err(SerdeError::Size {
                    topic: topic.to_string(),
                    type_name: "List",
                    expected_bytes: count,
                    actual_bytes: rest.len(),
                });
            }
            let (head, tail) = rest.split_at(count);
            *rest = tail;
            Ok(head.to_vec())
        };
        let read_u32 = |bytes: Vec<u8>| bytes.try_into().map(|four: [u8; 4]| u32::from_be_bytes(four) as usize);
        let length_of = |bytes: Vec<u8>| read_u32(bytes).unwrap_or(usize::MAX);
        let count = length_of(take(&mut rest, 4)?);
        // The count comes from the data: capacity is bounded by the bytes
        // present (each entry takes at least its 4-byte length).
        let mut entries = Vec::with_capacity(count.min(rest.len() / 4));
        for _ in 0..count {
            let length = length_of(take(&mut rest, 4)?);
            let entry = take(&mut rest, length)?;
            entries.push(self.0.deserialize(topic, Some(&entry))?);
        }
        Ok(entries)
    }
}

pub struct Nullable<T>(SerdeRef<T>);

impl<T> fmt::Debug for Nullable<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Nullable")
    }
}

impl<T> Serde<Option<T>> for Nullable<T> {
    fn serialize(&self, topic: &str, data: &Option<T>) -> Result<Option<Bytes>, SerdeError> {
        match data {
            Some(value) => self.0.serialize(topic, value),
            None => Ok(None),
        }
    }
    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> Result<Option<T>, SerdeError> {
        match data {
            Some(_) => self.0.deserialize(topic, data).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn bytes_of<T>(serde: &SerdeRef<T>, value: &T) -> Vec<u8> {
        serde.serialize("t", value).unwrap().unwrap().to_vec()
    }

    #[test]
    fn integers_are_kafka_big_endian() {
        // Kafka's IntegerSerializer and LongSerializer write big-endian.
        assert_eq!(bytes_of(&Serdes::i32(), &1), vec![0, 0, 0, 1]);
        assert_eq!(bytes_of(&Serdes::i64(), &258), vec![0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(bytes_of(&Serdes::i64(), &-1), vec![0xff; 8]);
        assert_eq!(bytes_of(&Serdes::u64(), &u64::MAX), vec![0xff; 8]);
        assert_eq!(Serdes::i64().deserialize("t", Some(&[0, 0, 0, 0, 0, 0, 1, 2])).unwrap(), 258);
        assert_eq!(Serdes::i32().deserialize("t", Some(&[0xff, 0xff, 0xff, 0xfe])).unwrap(), -2);
    }

    #[test]
    fn wrong_sizes_and_nulls_are_errors_not_panics() {
        let error = Serdes::i64().deserialize("t", Some(&[1, 2, 3])).unwrap_err();
        assert!(matches!(error, SerdeError::Size { expected_bytes: 8, actual_bytes: 3, .. }));
        assert!(matches!(Serdes::i32().deserialize("t", None), Err(SerdeError::Null { .. })));
        assert!(matches!(Serdes::string().deserialize("t", Some(&[0xff, 0xfe])), Err(SerdeError::Invalid { .. })));
    }

    #[test]
    fn nullable_reads_null_as_none_and_writes_none_as_null() {
        let serde = Serdes::nullable(Serdes::string());
        assert_eq!(serde.deserialize("t", None).unwrap(), None);
        assert_eq!(serde.deserialize("t", Some(b"a")).unwrap(), Some("a".to_string()));
        assert_eq!(serde.serialize("t", &None).unwrap(), None);
        assert_eq!(serde.serialize("t", &Some("a".to_string())).unwrap(), Some(Bytes::from_static(b"a")));
    }

    #[test]
    fn list_round_trips_and_a_truncated_or_huge_count_is_an_error() {
        let serde = Serdes::list(Serdes::string());
        let list = vec!["a".to_string(), String::new(), "ccc".to_string()];
        let bytes = serde.serialize("t", &list).unwrap().unwrap();
        assert_eq!(&bytes[..8], &[0, 0, 0, 3, 0, 0, 0, 1]);
        assert_eq!(serde.deserialize("t", Some(&bytes)).unwrap(), list);
        assert!(serde.deserialize("t", Some(&bytes[..bytes.len() - 1])).is_err());
        // A count of 4 billion over 4 bytes: an error, no huge allocation.
        assert!(serde.deserialize("t", Some(&[0xff, 0xff, 0xff, 0xff])).is_err());
    }

    #[test]
    fn json_round_trips_and_rejects_garbage() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Order {
            id: u32,
            item: String,
        }
        let serde = Serdes::json::<Order>();
        let order = Order { id: 7, item: "book".into() };
        let bytes = serde.serialize("t", &order).unwrap().unwrap();
        assert_eq!(&bytes[..], br#"{"id":7,"item":"book"}"#);
        assert_eq!(serde.deserialize("t", Some(&bytes)).unwrap(), order);
        assert!(matches!(serde.deserialize("t", Some(b"{not json")), Err(SerdeError::Invalid { .. })));
    }
}

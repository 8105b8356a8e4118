//! Identifier and unit types shared by every message: image names, epochs,
//! sequence numbers, recovery point ids, extent descriptors.
//!
//! Each type is valid by construction: an [`ImageName`] can never hold a path
//! separator, a [`SeqNo`] of zero means "none" only where a field says so.

use std::fmt;

/// Longest image name accepted on the wire and on disk, in bytes.
pub const MAX_IMAGE_NAME_LEN: usize = 128;

/// Name of a replicated image as the standby stores it (`DIR/images/NAME.raw`).
///
/// 1..=128 bytes of `[A-Za-z0-9._-]`, not starting with `.` or `-`. This keeps
/// every name a single, harmless path component (no `/`, `..`, NUL, or hidden
/// files), whatever a peer sends.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageName(String);

/// Why a string is not a valid [`ImageName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageNameError {
    /// The name is empty.
    #[error("image name is empty")]
    Empty,
    /// The name is longer than [`MAX_IMAGE_NAME_LEN`].
    #[error("image name is {len} bytes long, the limit is {MAX_IMAGE_NAME_LEN}")]
    TooLong {
        /// Length of the rejected name in bytes.
        len: usize,
    },
    /// The name starts with `.` or `-`.
    #[error("image name must not start with '.' or '-'")]
    BadFirstCharacter,
    /// The name holds a byte outside `[A-Za-z0-9._-]`.
    #[error("image name holds byte {byte:#04x} at {position}; only A-Z a-z 0-9 . _ - are allowed")]
    BadCharacter {
        /// The offending byte.
        byte: u8,
        /// Its position in the name.
        position: usize,
    },
}

impl ImageName {
    /// Validates `name` and wraps it.
    pub fn new(name: impl Into<String>) -> Result<Self, ImageNameError> {
        let name = name.into();
        Self::check(name.as_bytes())?;
        Ok(Self(name))
    }

    /// Validates raw bytes (as decoded from the wire) and wraps them.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ImageNameError> {
        Self::check(bytes)?;
        // check() admits only ASCII, so this conversion cannot fail.
        let text = std::str::from_utf8(bytes).map_err(|_| ImageNameError::BadCharacter {
            byte: bytes[0],
            position: 0,
        })?;
        Ok(Self(text.to_owned()))
    }

    fn check(bytes: &[u8]) -> Result<(), ImageNameError> {
        if bytes.is_empty() {
            return Err(ImageNameError::Empty);
        }
        if bytes.len() > MAX_IMAGE_NAME_LEN {
            return Err(ImageNameError::TooLong { len: bytes.len() });
        }
        if bytes[0] == b'.' || bytes[0] == b'-' {
            return Err(ImageNameError::BadFirstCharacter);
        }
        for (position, &byte) in bytes.iter().enumerate() {
            let ok = byte.is_ascii_alphanumeric() || byte == b'.' || byte == b'_' || byte == b'-';
            if !ok {
                return Err(ImageNameError::BadCharacter { byte, position });
            }
        }
        Ok(())
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImageName({:?})", self.0)
    }
}

impl std::str::FromStr for ImageName {
    type Err = ImageNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

macro_rules! counter_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw counter value.
            pub const fn get(self) -> u64 {
                self.0
            }
            /// The value after this one.
            pub const fn next(self) -> Self {
                Self(self.0 + 1)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

counter_type!(
    /// One replication cycle of one image. Epoch 0 means "no epoch" (nothing
    /// committed yet); the first cycle of an image is epoch 1.
    Epoch
);
counter_type!(
    /// Sequence number of an extent batch within one (image, epoch). The first
    /// batch is 1; 0 means "no batch" (e.g. nothing durable yet).
    SeqNo
);
counter_type!(
    /// Identifier of a recovery point (a committed, consistent state of every
    /// image of a group). Assigned by the primary, increasing.
    RecoveryPointId
);

/// What an extent does to the target range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExtentKind {
    /// The range receives the extent's bytes (carried in the batch payload).
    Data,
    /// The range reads as zeroes afterwards; no bytes travel.
    Zero,
    /// The range was discarded (trimmed) on the source; the standby may punch
    /// a hole. Reads as zeroes afterwards; no bytes travel.
    Discard,
}

impl ExtentKind {
    /// Wire code of this kind.
    pub const fn code(self) -> u8 {
        match self {
            Self::Data => 0x01,
            Self::Zero => 0x02,
            Self::Discard => 0x03,
        }
    }
    /// Kind for a wire code, if known.
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            0x01 => Some(Self::Data),
            0x02 => Some(Self::Zero),
            0x03 => Some(Self::Discard),
            _ => None,
        }
    }
}

/// How a data extent's bytes are encoded in the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Plain bytes.
    Raw,
    /// One zstd frame that decodes to exactly the extent's length.
    Zstd,
}

impl Codec {
    /// Wire code of this codec.
    pub const fn code(self) -> u8 {
        match self {
            Self::Raw => 0x00,
            Self::Zstd => 0x01,
        }
    }
    /// Codec for a wire code, if known.
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            0x00 => Some(Self::Raw),
            0x01 => Some(Self::Zstd),
            _ => None,
        }
    }
}

/// One extent of a batch: a byte range of the image and what happens to it.
///
/// For [`ExtentKind::Data`], `encoded_len` bytes of the batch payload (in
/// extent order) hold the range's data encoded with `codec`; for the other
/// kinds `codec` is [`Codec::Raw`] and `encoded_len` is 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtentHeader {
    /// Byte offset of the range in the image.
    pub offset: u64,
    /// Length of the range in bytes (> 0).
    pub length: u32,
    /// What happens to the range.
    pub kind: ExtentKind,
    /// Encoding of the payload bytes (data extents only).
    pub codec: Codec,
    /// Number of payload bytes this extent occupies.
    pub encoded_len: u32,
}

/// The TLS certificate fingerprint that names an agent: SHA-256 of its
/// certificate's DER encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentId(pub [u8; 32]);

impl AgentId {
    /// Lower-case hex, as printed by `ferry-agent init`.
    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(64);
        for byte in self.0 {
            out.push_str(&format!("{byte:02x}"));
        }
        out
    }

    /// Parses 64 hex digits (colons allowed between byte pairs, any case).
    pub fn from_hex(text: &str) -> Option<Self> {
        let digits: Vec<u8> = text.bytes().filter(|b| *b != b':').collect();
        if digits.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in digits.chunks(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(Self(out))
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgentId({})", self.to_hex())
    }
}

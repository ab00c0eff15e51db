//! ChannelData (RFC 8656 §12.4): a 2-byte channel number, a 2-byte length, the application
//! data, and over UDP optional padding to a multiple of 4 (§12.5).

use std::fmt;

/// The ChannelData header: channel number and length (RFC 8656 §12.4).
pub const CHANNEL_DATA_HEADER_LEN: usize = 4;

/// A ChannelData message: a zero-copy view on decode, the input of encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelData<'a> {
    /// The channel number, 0x4000–0x7FFF (see [`ChannelData::MAX_CHANNEL_ACCEPTED`]).
    pub channel: u16,
    /// The application data, without padding.
    pub data: &'a [u8],
}

/// Why bytes are not a ChannelData message. Always the sender's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelDataError {
    /// Shorter than the 4-byte header.
    TooShort,
    /// The channel number is outside 0x4000–0x7FFF (at 0x8000 and above the first two bits
    /// are not ChannelData's, and below 0x4000 the first byte is STUN's, RFC 9443 §3).
    BadChannel(u16),
    /// The length field claims more data than the datagram holds; RFC 8656 §12.6 discards it.
    Truncated,
}

impl fmt::Display for ChannelDataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort => write!(f, "shorter than a ChannelData header"),
            Self::BadChannel(c) => write!(f, "channel number 0x{c:04x} out of range"),
            Self::Truncated => write!(f, "length field longer than the datagram"),
        }
    }
}

impl std::error::Error for ChannelDataError {}

impl<'a> ChannelData<'a> {
    /// Lowest channel number (RFC 8656 §12).
    pub const MIN_CHANNEL: u16 = 0x4000;
    /// Highest channel number fog-turn's client binds (RFC 8656 §12): it shares its socket with
    /// QUIC, and RFC 9443 gives first bytes 0x50–0x7F to QUIC.
    pub const MAX_CHANNEL: u16 = 0x4FFF;
    /// Highest channel number accepted in a ChannelBind and in ChannelData: RFC 5766 §11
    /// allowed 0x4000–0x7FFF and RFC 8656 §12 narrowed it to 0x4FFF, but clients still draw
    /// from the old range (coturn's `turnutils_uclient` does, and coturn accepts it). A TURN
    /// server's socket carries no QUIC, so being liberal in what it accepts costs nothing there.
    pub const MAX_CHANNEL_ACCEPTED: u16 = 0x7FFF;

    /// Whether `channel` is one a ChannelBind may use and ChannelData may carry
    /// ([`MIN_CHANNEL`](Self::MIN_CHANNEL)..=[`MAX_CHANNEL_ACCEPTED`](Self::MAX_CHANNEL_ACCEPTED)).
    pub const fn is_valid_channel(channel: u16) -> bool {
        channel >= Self::MIN_CHANNEL && channel <= Self::MAX_CHANNEL_ACCEPTED
    }

    /// Reads a datagram. Never panics. Bytes after the data are taken for padding and ignored:
    /// over UDP the padding is optional (RFC 8656 §12.5) and §12.6 discards only datagrams too
    /// short for their length field.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, ChannelDataError> {
        let [c0, c1, l0, l1, rest @ ..] = bytes else {
            return Err(ChannelDataError::TooShort);
        };
        let channel = u16::from_be_bytes([*c0, *c1]);
        if !Self::is_valid_channel(channel) {
            return Err(ChannelDataError::BadChannel(channel));
        }
        let len = usize::from(u16::from_be_bytes([*l0, *l1]));
        let data = rest.get(..len).ok_or(ChannelDataError::Truncated)?;
        Ok(Self { channel, data })
    }

    /// Bytes [`encode`](Self::encode) writes for `data_len` bytes of data, padded or not.
    pub const fn encoded_len(data_len: usize, pad: bool) -> usize {
        let len = CHANNEL_DATA_HEADER_LEN + data_len;
        if pad { (len + 3) & !3 } else { len }
    }

    /// Writes the message into `buf`, zero-padded to a multiple of 4 when `pad` (RFC 8656
    /// §12.5: required over TCP, optional over UDP), and returns its length; `None` when `buf`
    /// is too small or the data longer than the 16-bit length field.
    ///
    /// # Panics
    ///
    /// If the channel number is out of range: the caller picked it.
    pub fn encode(&self, pad: bool, buf: &mut [u8]) -> Option<usize> {
        assert!(
            Self::is_valid_channel(self.channel),
            "channel 0x{:04x} out of range",
            self.channel
        );
        let data_len = u16::try_from(self.data.len()).ok()?;
        let total = Self::encoded_len(self.data.len(), pad);
        let out = buf.get_mut(..total)?;
        out[..2].copy_from_slice(&self.channel.to_be_bytes());
        out[2..4].copy_from_slice(&data_len.to_be_bytes());
        let end = CHANNEL_DATA_HEADER_LEN + self.data.len();
        out[CHANNEL_DATA_HEADER_LEN..end].copy_from_slice(self.data);
        out[end..].fill(0);
        Some(total)
    }
}

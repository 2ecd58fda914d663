//! A streaming logical replication connection (`replication=database`): the few messages of
//! PostgreSQL's streaming replication protocol the change stream needs, on top of
//! `postgres-protocol` (the message codec and SCRAM of tokio-postgres, which itself has no
//! replication mode).
//!
//! Start-up and authentication (trust, password, MD5, SCRAM-SHA-256), simple queries
//! (`CREATE_REPLICATION_SLOT`), then `START_REPLICATION`: the server answers `CopyBothResponse`
//! and sends `XLogData` (`w`: one decoded message and its LSN) and primary keepalives (`k`: how
//! far it has sent, and whether it wants an answer now); the client sends standby status updates
//! (`r`: how far it has applied, which lets the server recycle WAL, and optionally asks for a
//! keepalive at once).

use std::pin::Pin;
use std::time::SystemTime;

use anyhow::{Context, Result, anyhow, bail};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Lsn;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

trait Connection: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> Connection for T {}

/// What the server streams.
#[derive(Debug, PartialEq, Eq)]
pub enum WalMessage {
    /// One message of the output plugin (a `test_decoding` line) at `lsn` (for a commit, the
    /// end of its commit record).
    Data { lsn: Lsn, data: Bytes },
    /// Everything up to `wal_end` has been sent; `reply`: the server wants a status update now.
    Keepalive { wal_end: Lsn, reply: bool },
}

/// A replication connection to one database.
pub struct WalStream {
    connection: Pin<Box<dyn Connection>>,
    read: BytesMut,
    write: BytesMut,
}

impl WalStream {
    /// Connects to the database of `url` (a PostgreSQL URL or key=value string) in logical
    /// replication mode, as `application_name`.
    pub async fn connect(url: &str, application_name: &str) -> Result<Self> {
        let config: tokio_postgres::Config = url.parse().context("not a PostgreSQL connection string")?;
        let connection = open(&config).await?;
        let mut stream = WalStream { connection, read: BytesMut::with_capacity(64 * 1024), write: BytesMut::new() };
        let user = config.get_user().context("the connection string names no user")?.to_string();
        let database = config.get_dbname().unwrap_or(&user).to_string();
        let parameters = [
            ("user", user.as_str()),
            ("database", database.as_str()),
            ("replication", "database"),
            ("application_name", application_name),
            ("client_encoding", "UTF8"),
        ];
        frontend::startup_message(parameters, &mut stream.write)?;
        stream.flush().await?;
        stream.authenticate(&user, config.get_password()).await.context("replication connection refused")?;
        Ok(stream)
    }

    async fn authenticate(&mut self, user: &str, password: Option<&[u8]>) -> Result<()> {
        let password = || password.ok_or_else(|| anyhow!("the server asks for a password and the URL has none"));
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, body) = self.next_frame().await?;
            match tag {
                b'R' => match parse(tag, &body)? {
                    backend::Message::AuthenticationOk => {}
                    backend::Message::AuthenticationCleartextPassword => {
                        frontend::password_message(password()?, &mut self.write)?;
                    }
                    backend::Message::AuthenticationMd5Password(body) => {
                        let hashed =
                            postgres_protocol::authentication::md5_hash(user.as_bytes(), password()?, body.salt());
                        frontend::password_message(hashed.as_bytes(), &mut self.write)?;
                    }
                    backend::Message::AuthenticationSasl(body) => {
                        let mut mechanisms = body.mechanisms();
                        let mut offered = false;
                        while let Some(mechanism) = fallible_iterator::FallibleIterator::next(&mut mechanisms)? {
                            offered |= mechanism == SCRAM_SHA_256;
                        }
                        if !offered {
                            bail!("the server offers no SASL mechanism this client knows (SCRAM-SHA-256)");
                        }
                        let exchange = ScramSha256::new(password()?, ChannelBinding::unsupported());
                        frontend::sasl_initial_response(SCRAM_SHA_256, exchange.message(), &mut self.write)?;
                        scram = Some(exchange);
                    }
                    backend::Message::AuthenticationSaslContinue(body) => {
                        let exchange = scram.as_mut().context("SASL continue before SASL start")?;
                        exchange.update(body.data())?;
                        frontend::sasl_response(exchange.message(), &mut self.write)?;
                    }
                    backend::Message::AuthenticationSaslFinal(body) => {
                        scram.as_mut().context("SASL final before SASL start")?.finish(body.data())?;
                    }
                    _ => bail!("the server asks for an authentication this client does not support"),
                },
                b'Z' => return Ok(()),
                b'S' | b'K' | b'N' => {} // parameter status, key data, notices
                other => bail!("unexpected message `{}` during start-up", other as char),
            }
            self.flush().await?;
        }
    }

    /// Runs one replication command (`CREATE_REPLICATION_SLOT ...`); its rows, as text.
    pub async fn simple_query(&mut self, command: &str) -> Result<Vec<Vec<Option<String>>>> {
        frontend::query(command, &mut self.write)?;
        self.flush().await?;
        let (mut rows, mut error) = (Vec::new(), None);
        loop {
            let (tag, body) = self.next_frame().await?;
            match tag {
                b'D' => rows.push(data_row(body)?),
                b'E' => error = Some(error_text(tag, &body)),
                b'Z' => break,
                _ => {} // row description, command complete, notices
            }
        }
        match error {
            Some(error) => bail!("{error}"),
            None => Ok(rows),
        }
    }

    /// Starts streaming `slot` from `lsn` (0: where the slot stands) with the plugin's
    /// `options` (`"name" 'value', ...`).
    pub async fn start(&mut self, slot: &str, lsn: Lsn, options: &str) -> Result<()> {
        let command = format!("START_REPLICATION SLOT \"{slot}\" LOGICAL {} ({options})", super::format_lsn(lsn));
        frontend::query(&command, &mut self.write)?;
        self.flush().await?;
        loop {
            let (tag, body) = self.next_frame().await?;
            match tag {
                b'W' => return Ok(()), // CopyBothResponse
                b'E' => bail!("{}", error_text(tag, &body)),
                b'N' => {}
                other => bail!("unexpected message `{}` after START_REPLICATION", other as char),
            }
        }
    }

    /// The next message of the stream. Cancel-safe, so it may run under a timeout: bytes read
    /// stay in the buffer, and a message is taken out of it only once it is whole.
    pub async fn next(&mut self) -> Result<WalMessage> {
        loop {
            let (tag, mut body) = self.next_frame().await?;
            match tag {
                b'd' => {
                    let kind = body.try_get_u8().context("empty CopyData")?;
                    match kind {
                        b'w' => {
                            let lsn = body.try_get_u64().context("short XLogData")?;
                            let _wal_end = body.try_get_u64().context("short XLogData")?;
                            let _sent_at = body.try_get_i64().context("short XLogData")?;
                            return Ok(WalMessage::Data { lsn, data: body });
                        }
                        b'k' => {
                            let wal_end = body.try_get_u64().context("short keepalive")?;
                            let _sent_at = body.try_get_i64().context("short keepalive")?;
                            let reply = body.try_get_u8().context("short keepalive")? == 1;
                            return Ok(WalMessage::Keepalive { wal_end, reply });
                        }
                        other => bail!("unknown replication message `{}`", other as char),
                    }
                }
                b'E' => bail!("the replication stream failed: {}", error_text(tag, &body)),
                b'c' => bail!("the server ended the replication stream"),
                b'N' => {}
                other => bail!("unexpected message `{}` in the replication stream", other as char),
            }
        }
    }

    /// Tells the server that everything before `applied` is applied (written, flushed and
    /// applied: the slot's confirmed position moves there); `reply`: answer with a keepalive
    /// at once.
    pub async fn send_status(&mut self, applied: Lsn, reply: bool) -> Result<()> {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
        let mut message = BytesMut::with_capacity(34);
        message.put_u8(b'r');
        for _ in 0..3 {
            message.put_u64(applied);
        }
        message.put_i64(now - POSTGRES_EPOCH_MICROS);
        message.put_u8(u8::from(reply));
        self.write.put_u8(b'd');
        self.write.put_i32(4 + message.len() as i32);
        self.write.extend_from_slice(&message);
        self.flush().await
    }

    async fn flush(&mut self) -> Result<()> {
        if !self.write.is_empty() {
            self.connection.write_all(&self.write).await.context("cannot write to the server")?;
            self.connection.flush().await.context("cannot write to the server")?;
            self.write.clear();
        }
        Ok(())
    }

    /// The next whole message: its tag and body.
    async fn next_frame(&mut self) -> Result<(u8, Bytes)> {
        loop {
            if self.read.len() >= 5 {
                let len = u32::from_be_bytes(self.read[1..5].try_into().expect("4 bytes")) as usize;
                if len < 4 {
                    bail!("a message of length {len} from the server");
                }
                if self.read.len() > len {
                    let tag = self.read[0];
                    self.read.advance(5);
                    return Ok((tag, self.read.split_to(len - 4).freeze()));
                }
                self.read.reserve(len + 1 - self.read.len());
            }
            let read = self.connection.read_buf(&mut self.read).await.context("cannot read from the server")?;
            if read == 0 {
                bail!("the server closed the replication connection");
            }
        }
    }
}

/// Opens the transport to the first host of `config` (TCP or a Unix socket).
async fn open(config: &tokio_postgres::Config) -> Result<Pin<Box<dyn Connection>>> {
    let port = config.get_ports().first().copied().unwrap_or(5432);
    match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => {
            let stream = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .with_context(|| format!("cannot connect to {host}:{port}"))?;
            stream.set_nodelay(true)?;
            Ok(Box::pin(stream))
        }
        Some(tokio_postgres::config::Host::Unix(dir)) => {
            let path = dir.join(format!(".s.PGSQL.{port}"));
            let stream = tokio::net::UnixStream::connect(&path)
                .await
                .with_context(|| format!("cannot connect to {}", path.display()))?;
            Ok(Box::pin(stream))
        }
        None => bail!("the connection string names no host"),
    }
}

/// Parses one message with `postgres-protocol`'s codec.
fn parse(tag: u8, body: &Bytes) -> Result<backend::Message> {
    let mut frame = BytesMut::with_capacity(body.len() + 5);
    frame.put_u8(tag);
    frame.put_i32(4 + body.len() as i32);
    frame.extend_from_slice(body);
    backend::Message::parse(&mut frame)?.context("a truncated message")
}

/// An `ErrorResponse` as `SQLSTATE C: message (detail)`.
fn error_text(tag: u8, body: &Bytes) -> String {
    let Ok(backend::Message::ErrorResponse(error)) = parse(tag, body) else {
        return "an error the server sent could not be read".into();
    };
    let (mut code, mut message, mut detail) = (String::new(), String::new(), String::new());
    let mut fields = error.fields();
    while let Ok(Some(field)) = fallible_iterator::FallibleIterator::next(&mut fields) {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'C' => code = value,
            b'M' => message = value,
            b'D' => detail = format!(" ({value})"),
            _ => {}
        }
    }
    format!("SQLSTATE {code}: {message}{detail}")
}

/// A `DataRow`'s columns as text.
fn data_row(mut body: Bytes) -> Result<Vec<Option<String>>> {
    let count = body.try_get_i16().context("short DataRow")?;
    (0..count)
        .map(|_| {
            let len = body.try_get_i32().context("short DataRow")?;
            if len < 0 {
                return Ok(None);
            }
            let len = len as usize;
            if body.len() < len {
                bail!("short DataRow");
            }
            Ok(Some(String::from_utf8(body.split_to(len).to_vec()).context("a column is not UTF-8")?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_data_rows_with_nulls() {
        let mut body = BytesMut::new();
        body.put_i16(3);
        body.put_i32(3);
        body.extend_from_slice(b"abc");
        body.put_i32(-1);
        body.put_i32(0);
        let row = data_row(body.freeze()).unwrap();
        assert_eq!(row, [Some("abc".to_string()), None, Some(String::new())]);
        let mut short = BytesMut::new();
        short.put_i16(1);
        short.put_i32(5);
        short.extend_from_slice(b"ab");
        assert!(data_row(short.freeze()).is_err());
    }
}

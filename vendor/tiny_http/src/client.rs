use ascii::AsciiString;

use std::io::Error as IoError;
use std::io::Result as IoResult;
use std::io::{BufReader, BufWriter, ErrorKind, Read};

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::common::{HTTPVersion, Method};
use crate::util::RefinedTcpStream;
use crate::util::{SequentialReader, SequentialReaderBuilder, SequentialWriterBuilder};
use crate::Request;

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
pub struct ClientConnection {
    // address of the client
    remote_addr: IoResult<Option<SocketAddr>>,

    // sequence of Readers to the stream, so that the data is not read in
    //  the wrong order
    source: SequentialReaderBuilder<BufReader<RefinedTcpStream>>,

    // sequence of Writers to the stream, to avoid writing response #2 before
    //  response #1
    sink: SequentialWriterBuilder<BufWriter<RefinedTcpStream>>,

    // Reader to read the next header from
    next_header_source: SequentialReader<BufReader<RefinedTcpStream>>,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // true if the connection goes through SSL
    secure: bool,

    // PATCH (#1): set when a request's unread body was not drained; the connection closes.
    close_flag: Arc<AtomicBool>,

    // PATCH (#2, #7): bounds on the request head, and the body of the errors answered here.
    limits: crate::ServerOptions,
}

/// Error that can happen when reading a request.
#[derive(Debug)]
enum ReadError {
    WrongRequestLine,
    WrongHeader(HTTPVersion),
    // PATCH (#2): request line longer than max_header_bytes (414).
    RequestLineTooLong,
    // PATCH (#2): request line + headers over max_header_bytes, or more than max_headers (431).
    HeadersTooLarge(HTTPVersion),
    // PATCH (#7): a header that is not ASCII (400 instead of a silent close).
    NonAsciiHeader(HTTPVersion),
    /// the client sent an unrecognized `Expect` header
    ExpectationFailed(HTTPVersion),
    ReadIoError(IoError),
}

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the `TcpStream`.
    pub fn new(
        write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
        limits: crate::ServerOptions,
    ) -> ClientConnection {
        let remote_addr = read_socket.peer_addr();
        let secure = read_socket.secure();

        let mut source = SequentialReaderBuilder::new(BufReader::with_capacity(1024, read_socket));
        let first_header = source.next().unwrap();

        ClientConnection {
            source,
            sink: SequentialWriterBuilder::new(BufWriter::with_capacity(1024, write_socket)),
            remote_addr,
            next_header_source: first_header,
            no_more_requests: false,
            secure,
            close_flag: Arc::new(AtomicBool::new(false)),
            limits,
        }
    }

    /// true if the connection is HTTPS
    #[allow(dead_code)] // PATCH: HTTPS connections are no longer special-cased
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Reads the next line from self.next_header_source.
    ///
    /// Reads until `CRLF` is reached. The next read will start
    ///  at the first byte of the new line.
    /// Reads one CRLF-terminated line, taking its length (with the CRLF) off `budget`.
    /// PATCH (#2): `Ok(None)` when the line does not fit in `budget` (upstream read without
    /// a bound); the bytes are returned as they are, the caller checks they are ASCII.
    fn read_next_line(&mut self, budget: &mut usize) -> IoResult<Option<Vec<u8>>> {
        let mut buf = Vec::new();
        let mut prev_byte_was_cr = false;

        loop {
            let byte = self.next_header_source.by_ref().bytes().next();

            let byte = match byte {
                Some(b) => b?,
                None => return Err(IoError::new(ErrorKind::ConnectionAborted, "Unexpected EOF")),
            };
            // PATCH (#1): the previous request's body was left unread on the stream.
            if self.close_flag.load(Ordering::SeqCst) {
                return Err(IoError::new(
                    ErrorKind::ConnectionAborted,
                    "previous request body left unread",
                ));
            }
            if *budget == 0 {
                return Ok(None);
            }
            *budget -= 1;

            if byte == b'\n' && prev_byte_was_cr {
                buf.pop(); // removing the '\r'
                return Ok(Some(buf));
            }

            prev_byte_was_cr = byte == b'\r';

            buf.push(byte);
        }
    }

    fn read(&mut self) -> Result<Request, ReadError> {
        let (method, path, version, headers) = {
            // reading the request line
            // PATCH (#1): once the previous request is done with the stream, close if it left
            // body bytes unread (they would otherwise be parsed as the next request).
            self.next_header_source
                .wait_turn()
                .map_err(ReadError::ReadIoError)?;
            if self.close_flag.load(Ordering::SeqCst) {
                return Err(ReadError::ReadIoError(IoError::new(
                    ErrorKind::ConnectionAborted,
                    "previous request body left unread",
                )));
            }
            let mut budget = self.limits.max_header_bytes;
            let (method, path, version) = {
                let line = self
                    .read_next_line(&mut budget)
                    .map_err(ReadError::ReadIoError)?
                    .ok_or(ReadError::RequestLineTooLong)?;
                let line =
                    AsciiString::from_ascii(line).map_err(|_| ReadError::WrongRequestLine)?;

                parse_request_line(
                    line.as_str().trim(), // TODO: remove this conversion
                )?
            };

            // getting all headers
            let headers = {
                let mut headers = Vec::new();
                loop {
                    let line = self
                        .read_next_line(&mut budget)
                        .map_err(ReadError::ReadIoError)?
                        .ok_or_else(|| ReadError::HeadersTooLarge(version.clone()))?;

                    if line.is_empty() {
                        break;
                    };
                    if headers.len() >= self.limits.max_headers {
                        return Err(ReadError::HeadersTooLarge(version));
                    }
                    let line = AsciiString::from_ascii(line)
                        .map_err(|_| ReadError::NonAsciiHeader(version.clone()))?;
                    headers.push(match FromStr::from_str(line.as_str().trim()) {
                        // TODO: remove this conversion
                        Ok(h) => h,
                        _ => return Err(ReadError::WrongHeader(version)),
                    });
                }

                headers
            };

            (method, path, version, headers)
        };

        // building the writer for the request
        let writer = self.sink.next().unwrap();

        // follow-up for next potential request
        let mut data_source = self.source.next().unwrap();
        std::mem::swap(&mut self.next_header_source, &mut data_source);

        // building the next reader
        let request = crate::request::new_request(
            self.secure,
            method,
            path,
            version.clone(),
            headers,
            *self.remote_addr.as_ref().unwrap(),
            data_source,
            writer,
            Some(self.close_flag.clone()),
        )
        .map_err(|e| {
            use crate::request;
            match e {
                request::RequestCreationError::CreationIoError(e) => ReadError::ReadIoError(e),
                request::RequestCreationError::ExpectationFailed => {
                    ReadError::ExpectationFailed(version)
                }
            }
        })?;

        // return the request
        Ok(request)
    }
}

impl ClientConnection {
    /// PATCH (#2, #7): answers an error found while reading the request head (the caller then
    /// closes the connection); the body comes from `ServerOptions::error_body` when set.
    fn refuse(&mut self, status: u16, version: HTTPVersion, message: &str) {
        use crate::{Header, Response, StatusCode};
        let writer = self.sink.next().unwrap();
        match self.limits.error_body {
            Some(body) => {
                let (content_type, data) = body(status, message);
                let mut response = Response::from_data(data).with_status_code(StatusCode(status));
                if let Ok(h) = Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes()) {
                    response.add_header(h);
                }
                response.raw_print(writer, version, &[], false, None).ok();
            }
            None => {
                let response = Response::new_empty(StatusCode(status));
                response.raw_print(writer, version, &[], false, None).ok();
            }
        }
    }
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        use crate::{Response, StatusCode};

        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests {
            return None;
        }

        loop {
            let rq = match self.read() {
                Err(ReadError::WrongRequestLine) => {
                    // we don't know where the next request would start, so we have to close
                    self.refuse(400, HTTPVersion(1, 1), "malformed HTTP request line");
                    return None;
                }

                Err(ReadError::WrongHeader(ver)) => {
                    self.refuse(400, ver, "malformed HTTP header line");
                    return None;
                }

                Err(ReadError::NonAsciiHeader(ver)) => {
                    self.refuse(400, ver, "an HTTP header holds a byte that is not ASCII; send header values as ASCII (percent- or base64-encode others)");
                    return None;
                }

                Err(ReadError::RequestLineTooLong) => {
                    let message = format!(
                        "the request line is longer than {} bytes",
                        self.limits.max_header_bytes
                    );
                    self.refuse(414, HTTPVersion(1, 1), &message);
                    return None;
                }

                Err(ReadError::HeadersTooLarge(ver)) => {
                    let message = format!(
                        "the request line and headers exceed {} bytes or {} header lines; send fewer or smaller headers",
                        self.limits.max_header_bytes, self.limits.max_headers
                    );
                    self.refuse(431, ver, &message);
                    return None;
                }

                Err(ReadError::ReadIoError(ref err)) if err.kind() == ErrorKind::TimedOut => {
                    // request timeout
                    self.refuse(408, HTTPVersion(1, 1), "no complete request within the read timeout");
                    return None; // closing the connection
                }

                Err(ReadError::ExpectationFailed(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(417));
                    response.raw_print(writer, ver, &[], true, None).ok();
                    return None; // TODO: should be recoverable, but needs handling in case of body
                }

                Err(ReadError::ReadIoError(_)) => return None,

                Ok(rq) => rq,
            };

            // checking HTTP version
            if *rq.http_version() > (1, 1) {
                let writer = self.sink.next().unwrap();
                let response = Response::from_string(
                    "This server only supports HTTP versions 1.0 and 1.1".to_owned(),
                )
                .with_status_code(StatusCode(505));
                response
                    .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                    .ok();
                continue;
            }

            // updating the status of the connection
            let connection_header = rq
                .headers()
                .iter()
                .find(|h| h.field.equiv("Connection"))
                .map(|h| h.value.as_str());

            let lowercase = connection_header.map(|h| h.to_ascii_lowercase());

            match lowercase {
                Some(ref val) if val.contains("close") => self.no_more_requests = true,
                Some(ref val) if val.contains("upgrade") => self.no_more_requests = true,
                Some(ref val)
                    if !val.contains("keep-alive") && *rq.http_version() == HTTPVersion(1, 0) =>
                {
                    self.no_more_requests = true
                }
                None if *rq.http_version() == HTTPVersion(1, 0) => self.no_more_requests = true,
                _ => (),
            };

            // returning the request
            return Some(rq);
        }
    }
}

/// Parses a "HTTP/1.1" string.
fn parse_http_version(version: &str) -> Result<HTTPVersion, ReadError> {
    let (major, minor) = match version {
        "HTTP/0.9" => (0, 9),
        "HTTP/1.0" => (1, 0),
        "HTTP/1.1" => (1, 1),
        "HTTP/2.0" => (2, 0),
        "HTTP/3.0" => (3, 0),
        _ => return Err(ReadError::WrongRequestLine),
    };

    Ok(HTTPVersion(major, minor))
}

/// Parses the request line of the request.
/// eg. GET / HTTP/1.1
fn parse_request_line(line: &str) -> Result<(Method, String, HTTPVersion), ReadError> {
    let mut parts = line.split(' ');

    let method = parts.next().and_then(|w| w.parse().ok());
    let path = parts.next().map(ToOwned::to_owned);
    let version = parts.next().and_then(|w| parse_http_version(w).ok());

    method
        .and_then(|method| Some((method, path?, version?)))
        .ok_or(ReadError::WrongRequestLine)
}

#[cfg(test)]
mod test {
    #[test]
    fn test_parse_request_line() {
        let (method, path, ver) = super::parse_request_line("GET /hello HTTP/1.1").unwrap();

        assert!(method == crate::Method::Get);
        assert!(path == "/hello");
        assert!(ver == crate::common::HTTPVersion(1, 1));

        assert!(super::parse_request_line("GET /hello").is_err());
        assert!(super::parse_request_line("qsd qsd qsd").is_err());
    }
}

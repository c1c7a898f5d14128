//! Writes the fuzz targets' seed inputs (`make fuzz`) from the hostile-input corpus, one file
//! per case and target, into the folder given:
//! - `request_head/`: each case's bytes as sent;
//! - `chunked/`: what follows the head of each case with a chunked body;
//! - `response_head/`: each case turned into an answer (its first line made a status line).

use std::path::PathBuf;

use microgate_test_support::hostile::corpus;

#[derive(Debug, thiserror::Error)]
enum SeedError {
    #[error(transparent)]
    Corpus(#[from] corpus::CorpusError),
    #[error("usage: fuzz-seeds <folder>")]
    Usage,
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

fn write(dir: &std::path::Path, name: &str, bytes: &[u8]) -> Result<(), SeedError> {
    let path = dir.join(name);
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&path, bytes))
        .map_err(|source| SeedError::Write { path, source })
}

fn main() -> Result<(), SeedError> {
    let out = PathBuf::from(std::env::args_os().nth(1).ok_or(SeedError::Usage)?);
    let cases = corpus::cases()?;
    for case in &cases {
        write(&out.join("request_head"), &case.id, &case.bytes)?;
        let head_end = case.bytes.windows(4).position(|w| w == b"\r\n\r\n");
        let lower = case.bytes.to_ascii_lowercase();
        if let Some(end) = head_end
            && lower.windows(7).any(|w| w == b"chunked")
        {
            write(&out.join("chunked"), &case.id, &case.bytes[end + 4..])?;
        }
        let first_line = case.bytes.iter().position(|b| *b == b'\n').map_or(0, |n| n + 1);
        let mut answer = b"HTTP/1.1 200 OK\r\n".to_vec();
        answer.extend_from_slice(&case.bytes[first_line..]);
        write(&out.join("response_head"), &case.id, &answer)?;
    }
    eprintln!("fuzz-seeds: {} cases written to {}", cases.len(), out.display());
    Ok(())
}

//! [`ErrorChain`]: an error and its `source()` chain on one line, for logs and `/readyz`.

/// Displays an error with its whole `source()` chain, joined by `: `, for one log line.
///
/// A cause whose text already ends the line is not repeated: thiserror's `transparent`
/// variants show their inner error's text, which is also the next source's.
#[derive(Debug)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut last = self.0.to_string();
        f.write_str(&last)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            let text = error.to_string();
            if !last.ends_with(&text) {
                write!(f, ": {text}")?;
                last = text;
            }
            source = error.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("reading the state")]
        Read(#[source] Inner),
        #[error(transparent)]
        Passed(Inner),
    }

    #[derive(Debug, thiserror::Error)]
    #[error("connection reset")]
    struct Inner;

    #[test]
    fn every_cause_once() {
        assert_eq!(
            ErrorChain(&Outer::Read(Inner)).to_string(),
            "reading the state: connection reset"
        );
        assert_eq!(
            ErrorChain(&Outer::Passed(Inner)).to_string(),
            "connection reset"
        );
    }
}

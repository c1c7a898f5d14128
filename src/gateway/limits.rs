//! The process's open-files limit: every client connection, and every endpoint connection, is
//! a file descriptor, and the usual soft limit (1024) would stop a gateway at about a thousand
//! clients. The soft limit is raised to the hard one at start, as far as the system lets.

/// Raises the soft open-files limit to the hard limit and logs what it got; returns the soft
/// limit in force afterwards (`None` if it cannot be read).
pub fn raise_open_files() -> Option<u64> {
    let (soft, hard) = match rlimit::Resource::NOFILE.get() {
        Ok(limits) => limits,
        Err(error) => {
            tracing::warn!(%error, "cannot read the open-files limit");
            return None;
        }
    };
    match rlimit::increase_nofile_limit(hard) {
        Ok(now) => {
            tracing::info!(before = soft, now, hard, "open-files limit");
            Some(now)
        }
        Err(error) => {
            tracing::warn!(%error, soft, hard, "cannot raise the open-files limit; connections past it wait");
            Some(soft)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let now = raise_open_files().expect("the limit is readable");
        let (soft, hard) = rlimit::Resource::NOFILE.get().expect("read back");
        assert_eq!(now, soft);
        // increase_nofile_limit stops at the kernel's own ceiling (fs.nr_open) when the hard
        // limit is unlimited.
        assert!(
            soft == hard || hard == rlimit::INFINITY,
            "soft {soft}, hard {hard}"
        );
    }
}

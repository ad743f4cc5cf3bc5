//! `cai merge`: the run directories of finished shards → one dataset (the
//! work is [`crate::output::merge`]'s); with one directory, the current
//! dataset of a run refreshed over an edited prompts file.

use crate::cli::MergeArgs;
use crate::error::RunError;
use crate::output::merge::{self, MergeReport, MergeSpec};

/// `cai merge`.
pub fn merge(args: &MergeArgs) -> Result<MergeReport, RunError> {
    Ok(merge::merge(&MergeSpec {
        dirs: args.dirs.clone(),
        out: args.out.clone(),
        partial: args.partial,
        prompts: args.prompts.clone(),
    })?)
}

/// The lines printed after a merge.
pub fn summary(r: &MergeReport) -> String {
    let c = &r.counts;
    let mut s = format!(
        "cai: merged {} SFT rows, {} preference rows and {} rejects for {} prompts into {}\n",
        c.sft_rows,
        c.preference_rows,
        c.rejected,
        c.prompts,
        r.out.display()
    );
    if c.superseded + c.removed > 0 {
        s.push_str(&format!(
            "cai: left out {} rows of edited prompts and {} rows of prompts no longer in the file\n",
            c.superseded, c.removed
        ));
    }
    for g in &r.gaps {
        s.push_str(&format!("cai: --partial: {g}\n"));
    }
    s
}

//! vmwarden.toml(5), written from the annotated example configuration
//! (`config/vmwarden.toml`, which the package installs and a test parses): every table and
//! key with its default and the comment above it. One source, so the page cannot drift from
//! what the daemon reads.

const EXAMPLE: &str = include_str!("../../config/vmwarden.toml");

fn roff(text: &str) -> String {
    let t = text.replace('\\', "\\e");
    // A line that starts with a dot or an apostrophe would be read as a request.
    if t.starts_with('.') || t.starts_with('\'') {
        format!("\\&{t}")
    } else {
        t
    }
}

/// The page, in roff.
pub fn page() -> String {
    let mut out = format!(
        ".TH VMWARDEN.TOML 5 \"\" \"vmwarden {}\" \"vmwarden\"\n\
         .SH NAME\nvmwarden.toml \\- configuration of vmwardend\n\
         .SH SYNOPSIS\n/etc/vmwarden/config.toml\n\
         .SH DESCRIPTION\n\
         vmwardend(8) reads one TOML file at start (\\fB--config\\fR). Every key is optional \
         and has the default shown below. An unknown table or key, a value of the wrong type \
         or out of its bounds, an invalid user name in \\fB[access]\\fR or a socket group \
         that does not exist stops the daemon with an error naming the key, its line and \
         column (and the key meant, for a misspelled one); \\fBvmwardend --check-config \
         FILE\\fR checks a file without starting. Durations are written like \\fB30s\\fR, \
         \\fB10m\\fR, \\fB2h\\fR or \\fB1day\\fR.\n",
        env!("CARGO_PKG_VERSION")
    );
    let mut comment: Vec<String> = vec![];
    // The comments at the top describe the file, which the DESCRIPTION above already does.
    let mut in_table = false;
    for line in EXAMPLE.lines() {
        let line = line.trim();
        if let Some(c) = line.strip_prefix('#') {
            comment.push(c.trim().to_owned());
        } else if line.starts_with('[') {
            out.push_str(&format!(".SS {}\n", roff(line)));
            if in_table && !comment.is_empty() {
                out.push_str(&format!(".PP\n{}\n", roff(&comment.join(" "))));
            }
            comment.clear();
            in_table = true;
        } else if let Some((key, value)) = line.split_once('=') {
            out.push_str(&format!(
                ".TP\n\\fB{}\\fR = {}\n",
                roff(key.trim()),
                roff(value.trim())
            ));
            if !comment.is_empty() {
                out.push_str(&format!("{}\n", roff(&comment.join(" "))));
                comment.clear();
            }
        } else if line.is_empty() {
            if in_table && !comment.is_empty() {
                out.push_str(&format!(".PP\n{}\n", roff(&comment.join(" "))));
            }
            comment.clear();
        }
    }
    out.push_str(".SH FILES\n/etc/vmwarden/config.toml\n.SH SEE ALSO\nvmwardend(8), vmwarden(1)\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_the_example_is_on_the_page() {
        let p = page();
        assert!(p.starts_with(".TH VMWARDEN.TOML 5"));
        for table in [
            "[daemon]",
            "[libvirt]",
            "[access]",
            "[keys]",
            "[idle]",
            "[limits]",
        ] {
            assert!(p.contains(&format!(".SS {table}")), "{table}");
        }
        for key in [
            "socket_group",
            "unlock_ttl",
            "owners_may_disable",
            "max_memory_mib",
        ] {
            assert!(p.contains(&format!("\\fB{key}\\fR = ")), "{key}");
        }
        assert!(p.contains("An unlocked project key is forgotten after this long (10s to 30d)."));
    }
}

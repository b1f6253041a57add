//! Column name normalization.

/// `customerId` -> `customer_id`, `First Name` -> `first_name`, `HTTPServer` -> `http_server`.
/// Anything that is not a letter or digit becomes one `_`; leading and trailing `_` are dropped.
pub fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_alphanumeric() {
            if c.is_uppercase() && i > 0 {
                let prev = chars[i - 1];
                let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
                if prev.is_lowercase()
                    || prev.is_ascii_digit()
                    || (prev.is_uppercase() && next_lower)
                {
                    push_sep(&mut out);
                }
            }
            out.extend(c.to_lowercase());
        } else {
            push_sep(&mut out);
        }
    }
    while out.ends_with('_') {
        out.pop();
    }
    out
}

fn push_sep(out: &mut String) {
    if !out.is_empty() && !out.ends_with('_') {
        out.push('_');
    }
}

#[cfg(test)]
mod tests {
    use super::snake_case;

    #[test]
    fn names_become_snake_case() {
        for (input, want) in [
            ("id", "id"),
            ("customerId", "customer_id"),
            ("First Name", "first_name"),
            ("HTTPServer", "http_server"),
            ("userID", "user_id"),
            ("order-total", "order_total"),
            ("__weird__Name__", "weird_name"),
            ("already_snake", "already_snake"),
            ("line2Total", "line2_total"),
        ] {
            assert_eq!(snake_case(input), want, "{input}");
        }
    }
}

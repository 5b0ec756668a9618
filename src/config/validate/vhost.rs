//! `[[vhost]]`: host names, routes, redirects and body limits.

use super::*;

pub(super) fn vhost(
    c: &mut Checker<'_>,
    t: &Spanned<toml::Table>,
    i: usize,
    names: &mut HashSet<String>,
    pools: &Defined<Pool>,
) -> Vhost {
    let span = t.span();
    let raw: RawVhost = c.entry(t, &format!("vhost[{i}]"));
    let name = c.unique_name(names, &span, &format!("vhost[{i}]"), "vhost", &raw.name, i);
    let p = format!("vhost {name:?}");
    let mut hosts = Vec::new();
    for h in &raw.hosts {
        let lower = h.to_ascii_lowercase();
        let bare = lower.strip_prefix("*.").unwrap_or(&lower);
        let ok = !bare.is_empty()
            && bare.len() <= MAX_HOST
            && !bare.contains('*')
            && bare.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= MAX_LABEL
                    && l.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
            });
        if ok {
            hosts.push(lower);
        } else {
            c.report(
                &span,
                &p,
                Some("hosts"),
                format!("{h:?} is not a host name"),
                "write exact names (\"www.example.com\") or a leading wildcard (\"*.example.com\"), without port, of at most 253 bytes and 63 per label",
            );
        }
    }
    if raw.hosts.is_empty() {
        c.report(
            &span,
            &p,
            Some("hosts"),
            "the vhost serves no host names",
            "add `hosts = [\"www.example.com\"]`",
        );
    }
    let mut certificates = Vec::new();
    for (j, cert) in raw.certificates.iter().enumerate() {
        let cp = format!("{p}.certificates[{j}]");
        let cf = c.required(&span, &cp, "cert", &cert.cert, "\"certs/www.pem\"");
        let kf = c.required(&span, &cp, "key", &cert.key, "\"certs/www.key\"");
        if let (Some(cf), Some(kf)) = (cf, kf) {
            certificates.push(CertificateFiles {
                cert: cf.into(),
                key: kf.into(),
            });
        }
    }
    if let Some(pool) = &raw.pool {
        check_pool_ref(c, &span, &p, "pool", pool, pools);
    }
    let mut routes = Vec::new();
    if raw.routes.len() > MAX_ROUTES_PER_VHOST {
        c.report(
            &span,
            &p,
            Some("routes"),
            format!(
                "{} routes are listed, more than {MAX_ROUTES_PER_VHOST}: every request is compared with each",
                raw.routes.len()
            ),
            "route by shorter prefixes that cover several paths (\"/api/\" for \"/api/a/\" and \"/api/b/\")",
        );
    }
    for (j, r) in raw.routes.iter().enumerate().take(MAX_ROUTES_PER_VHOST) {
        let rp = format!("{p}.routes[{j}]");
        let prefix = c.required(&span, &rp, "path_prefix", &r.path_prefix, "\"/api/\"");
        let pool = c.required(&span, &rp, "pool", &r.pool, "\"api\"");
        if let (Some(prefix), Some(pool)) = (prefix, pool) {
            if !prefix.starts_with('/') {
                c.report(
                    &span,
                    &rp,
                    Some("path_prefix"),
                    format!("{prefix:?} does not start with '/'"),
                    "write an absolute path prefix such as \"/api/\"",
                );
            }
            check_pool_ref(c, &span, &rp, "pool", pool, pools);
            routes.push(Route {
                path_prefix: prefix.into(),
                pool: pool.into(),
            });
        }
    }
    if raw.pool.is_none() && routes.is_empty() && raw.redirect_https != Some(true) {
        c.report(
            &span,
            &p,
            Some("pool"),
            "the vhost has no pool, no routes and no redirect: requests would have nowhere to go",
            "add `pool = \"...\"`",
        );
    }
    let hsts_max_age = raw.hsts_max_age.as_ref().map(|_| {
        c.duration_in(
            &span,
            &p,
            "hsts_max_age",
            &raw.hsts_max_age,
            Duration::ZERO,
            Duration::ZERO..=Duration::from_secs(730 * 86_400),
        )
    });
    Vhost {
        name,
        hosts,
        certificates,
        pool: raw.pool.clone(),
        routes,
        redirect_https: raw.redirect_https.unwrap_or(false),
        hsts_max_age,
        max_body_size: raw.max_body_size.filter(|&v| {
            let ok = v <= MAX_BODY_SIZE;
            if !ok {
                c.report(
                    &span,
                    &p,
                    Some("max_body_size"),
                    format!("{v} is outside 0..={MAX_BODY_SIZE} bytes"),
                    "set `max_body_size` between 0 and 1099511627776 (1 TiB), or remove it for no limit",
                );
            }
            ok
        }),
    }
}

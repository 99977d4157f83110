//! login, logout, register, whoami.

use std::io::{BufRead, IsTerminal, Write};

use kodel_core::api::{Registered, SsoDeviceStart, TokenPair, User};
use serde_json::json;

use super::Ctx;
use crate::cli::{LoginArgs, RegisterArgs};
use crate::client::Client;
use crate::config::{Credentials, Stored};
use crate::exit::CliError;
use crate::output;

fn prompt(label: &str) -> Result<String, CliError> {
    if !std::io::stdin().is_terminal() {
        return Err(CliError::usage(format!("{label} needed and stdin is not a terminal")).hint("pass it as a flag"));
    }
    eprint!("{label}: ");
    std::io::stderr().flush()?;
    let mut s = String::new();
    std::io::stdin().lock().read_line(&mut s)?;
    Ok(s.trim().to_owned())
}

fn read_password(from_stdin: bool) -> Result<String, CliError> {
    if from_stdin {
        let mut s = String::new();
        std::io::stdin().lock().read_line(&mut s)?;
        return Ok(s.trim_end_matches(['\n', '\r']).to_owned());
    }
    rpassword::prompt_password("Password: ").map_err(|e| {
        CliError::usage(format!("cannot read a password: {e}")).hint("use --password-stdin to pipe it in")
    })
}

fn report(ctx: &Ctx, stored: &Stored, email: &str) -> Result<(), CliError> {
    if ctx.json {
        return output::json(&json!({ "server": ctx.client.server, "email": email, "stored": match stored { Stored::Keyring => "keyring".to_owned(), Stored::File(p) => p.display().to_string() } }));
    }
    let place = match stored {
        Stored::Keyring => "the system keyring".to_owned(),
        Stored::File(p) => p.display().to_string(),
    };
    eprintln!("Logged in to {} as {email} (credentials in {place})", ctx.client.server);
    Ok(())
}

/// Remembers the server, and the org if the user has exactly one.
async fn remember(ctx: &mut Ctx, client: &mut Client) -> Result<(), CliError> {
    ctx.settings.server = Some(client.server.clone());
    if ctx.settings.org.is_none() {
        let orgs: kodel_core::api::Page<kodel_core::api::Org> = client.get("/api/v1/orgs").await?;
        if let [only] = orgs.data.as_slice() {
            ctx.settings.org = Some(only.slug.clone());
        }
    }
    ctx.settings.save()
}

pub async fn login(ctx: &mut Ctx, args: LoginArgs) -> Result<(), CliError> {
    let server = ctx.client.server.clone();
    let (creds, email) = if let Some(token) = args.token {
        let creds = Credentials { api_token: Some(token), ..Credentials::default() };
        let probe = Client::new(&server, Some(creds.clone()), true)?;
        let me: User = probe.get("/api/v1/me").await?;
        (Credentials { email: Some(me.email.clone()), ..creds }, me.email)
    } else if args.sso {
        let pair = sso_login(&ctx.client).await?;
        let probe = Client::new(&server, Some(Credentials { access_token: Some(pair.access_token.clone()), ..Credentials::default() }), true)?;
        let me: User = probe.get("/api/v1/me").await?;
        let creds = Credentials { email: Some(me.email.clone()), access_token: Some(pair.access_token), refresh_token: Some(pair.refresh_token), api_token: None };
        (creds, me.email)
    } else {
        let email = match args.email {
            Some(e) => e,
            None => prompt("Email")?,
        };
        let password = read_password(args.password_stdin)?;
        let pair = password_login(&ctx.client, &email, &password).await?;
        let creds = Credentials { email: Some(email.clone()), access_token: Some(pair.access_token), refresh_token: Some(pair.refresh_token), api_token: None };
        (creds, email)
    };
    let stored = creds.save(&server)?;
    let mut client = Client::new(&server, Some(creds), false)?;
    remember(ctx, &mut client).await?;
    report(ctx, &stored, &email)
}

pub async fn register(ctx: &mut Ctx, args: RegisterArgs) -> Result<(), CliError> {
    let password = read_password(args.password_stdin)?;
    let resp = ctx
        .client
        .raw(reqwest::Method::POST, "/api/v1/auth/register", Some(json!({ "email": args.email, "password": password, "name": args.name })))
        .await?;
    let reg: Registered = crate::client::decode(resp).await?;
    // The server answers the same whether the email was free or not (so registering
    // tells nobody which emails have accounts); logging in tells the user.
    let pair = password_login(&ctx.client, &reg.email, &password)
        .await
        .map_err(|e| e.hint("if this email already had an account, log in with its own password: kodel login"))?;
    let server = ctx.client.server.clone();
    let creds = Credentials { email: Some(reg.email.clone()), access_token: Some(pair.access_token), refresh_token: Some(pair.refresh_token), api_token: None };
    let stored = creds.save(&server)?;
    ctx.settings.server = Some(server);
    ctx.settings.save()?;
    report(ctx, &stored, &reg.email)
}

/// Single sign-on by the device authorization grant: the person signs in at the
/// provider in any browser while this waits; the pair of tokens.
async fn sso_login(client: &Client) -> Result<TokenPair, CliError> {
    let resp = client.raw(reqwest::Method::POST, "/api/v1/auth/sso/device", None).await?;
    let start: SsoDeviceStart = crate::client::decode(resp).await?;
    // What the provider wrote goes to the terminal without control characters.
    let plain = |s: &str| s.chars().filter(|c| !c.is_control()).collect::<String>();
    eprintln!("To sign in, open {} in a browser and enter the code {}", plain(&start.verification_uri), plain(&start.user_code));
    if let Some(full) = &start.verification_uri_complete {
        eprintln!("(or open {})", plain(full));
    }
    eprintln!("Waiting for you to finish there (the code is good for {} minutes)...", start.expires_in.div_ceil(60));
    let body = json!({ "handle": start.handle });
    loop {
        // The server waits up to 20 s for the person each time; 428 means not yet.
        let resp = client.raw(reqwest::Method::POST, "/api/v1/auth/sso/device/token", Some(body.clone())).await?;
        if resp.status() == reqwest::StatusCode::PRECONDITION_REQUIRED {
            tokio::time::sleep(std::time::Duration::from_secs(start.interval.clamp(1, 30))).await;
            continue;
        }
        return crate::client::decode(resp).await;
    }
}

/// Logs in with an email and password; the pair of tokens.
pub async fn password_login(client: &Client, email: &str, password: &str) -> Result<TokenPair, CliError> {
    let resp = client.raw(reqwest::Method::POST, "/api/v1/auth/login", Some(json!({ "email": email, "password": password }))).await?;
    crate::client::decode(resp).await
}

pub async fn logout(ctx: &mut Ctx) -> Result<(), CliError> {
    let server = ctx.client.server.clone();
    if let Some(rt) = ctx.client.credentials().and_then(|c| c.refresh_token) {
        // End the session on the server too; being offline does not stop a logout.
        let _ = ctx.client.raw(reqwest::Method::POST, "/api/v1/auth/logout", Some(json!({ "refresh_token": rt }))).await;
    }
    Credentials::delete(&server)?;
    if ctx.json {
        output::json(&json!({ "server": server, "logged_out": true }))
    } else {
        eprintln!("Logged out of {server}");
        Ok(())
    }
}

pub async fn whoami(ctx: &mut Ctx) -> Result<(), CliError> {
    ctx.require_login()?;
    let me: User = ctx.client.get("/api/v1/me").await?;
    if ctx.json {
        return output::json(&me);
    }
    println!("{} <{}> on {}", me.name, me.email, ctx.client.server);
    if let Some(org) = &ctx.org {
        println!("org: {org}");
    }
    Ok(())
}

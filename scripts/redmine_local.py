#!/usr/bin/env python3
"""Bring up a private Redmine (Debian's `redmine` + `redmine-sqlite`) on 127.0.0.1 for tests.

    python scripts/redmine_local.py up [--port N]     # prints JSON: url, pid, api keys, workdir
    python scripts/redmine_local.py down PID WORKDIR

Migrating and seeding a fresh database takes ~15 s, so a prepared instance (sqlite database with
users, API keys, statuses, workflow and sample issues) is cached under
~/.cache/deploybot/redmine-<package version>-<seed hash>/ and copied for every run; a run then
only pays for the web server start. The cache is rebuilt when the package version or the seed
(SEED_RUBY) changes and is never shared between two running servers (each run gets its own copy).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

REDMINE_APP = Path("/usr/share/redmine")
TENANT = "deploybot"
CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "deploybot"
STEP_TIMEOUT = 180  # seconds for one rake/runner step (a cold 2-core machine needs ~15 s)
START_TIMEOUT = 60  # seconds for the web server to answer

# Seeds what has no REST API: settings, statuses, workflow, users with API keys, a project, one
# issue with CQ/QA notes and one whose journals tie on created_on (and one stamped earlier than
# its id says). Prints the API keys as JSON on the last line.
SEED_RUBY = r"""
require 'json'
Setting.rest_api_enabled = '1'
Setting.text_formatting = 'common_mark'
Setting.login_required = '0'
Setting.default_language = 'en'

def user(login, first, last, admin: false)
  u = User.find_by(login: login) || User.new(firstname: first, lastname: last, mail: "#{login}@example.test")
  u.login = login
  u.admin = admin
  u.password = u.password_confirmation = 'deploybot-test-pass'
  u.status = User::STATUS_ACTIVE
  u.save!
  u
end

def api_key(u)
  (Token.find_by(user_id: u.id, action: 'api') || Token.create!(user: u, action: 'api')).value
end

rfp = IssueStatus.find_or_create_by!(name: 'Ready for Production') { |s| s.is_closed = false }
deployed = IssueStatus.find_or_create_by!(name: 'Deployed') { |s| s.is_closed = true }
new_status = IssueStatus.find_by!(name: 'New')
in_progress = IssueStatus.find_by!(name: 'In Progress')
closed = IssueStatus.find_by!(name: 'Closed')

deployer = Role.find_or_create_by!(name: 'Deployer') do |r|
  r.permissions = [:view_issues, :add_issues, :edit_issues, :add_issue_notes, :view_private_notes,
                   :set_notes_private]
  r.issues_visibility = 'all'
end
developer = Role.find_by!(name: 'Developer')

# The deploy bot may only move "Ready for Production" -> "Deployed" (and New -> In Progress ->
# Ready for Production so tests can set issues up); every other move is refused by the workflow.
Tracker.all.each do |t|
  t.core_fields = t.core_fields  # keep defaults
  [[new_status, in_progress], [in_progress, rfp], [new_status, rfp], [rfp, deployed]].each do |from, to|
    WorkflowTransition.find_or_create_by!(tracker_id: t.id, role_id: deployer.id,
                                          old_status_id: from.id, new_status_id: to.id)
  end
  [[rfp, closed], [new_status, rfp]].each do |from, to|
    WorkflowTransition.find_or_create_by!(tracker_id: t.id, role_id: developer.id,
                                          old_status_id: from.id, new_status_id: to.id)
  end
end

admin = User.find_by!(login: 'admin')
admin.must_change_passwd = false
admin.save!
bot = user('deploybot', 'Deploy', 'Bot')
alice = user('alice', 'Alice', 'Developer')
carol = user('carol', 'Carol', 'Reviewer')
quinn = user('quinn', 'Quinn', 'Tester')
dora = user('dora', 'Dora', 'Renamer')  # renames herself in the tests
bob = user('bob', 'Bob', 'Builder')  # the real login bob, whom a renamed dora must never become

project = Project.find_by(identifier: 'webshop') || Project.new(name: 'Webshop', identifier: 'webshop')
project.is_public = true
project.trackers = Tracker.all.to_a
project.enabled_module_names = ['issue_tracking']
project.save!
[[bot, deployer], [alice, developer], [carol, developer], [quinn, developer], [dora, developer],
 [bob, developer]].each do |u, role|
  next if Member.find_by(user_id: u.id, project_id: project.id)
  Member.create!(user: u, project: project, roles: [role])
end

issue = Issue.new(project: project, tracker: project.trackers.first, author: alice,
                  subject: 'Checkout: fix rounding of totals', status: rfp,
                  priority: IssuePriority.default || IssuePriority.first)
issue.save!
[[carol, 'CQ approved: code looks good'], [quinn, 'QA PASS on staging build 1.4.2']].each do |u, note|
  Journal.create!(journalized: issue, user: u, notes: note)
end

# Journals in one second (Redmine keeps whole seconds), and a later one stamped a minute earlier
# (a skewed clock): the API orders them by created_on, then id; their ids are the true order.
ties = Issue.new(project: project, tracker: project.trackers.first, author: alice,
                 subject: 'Checkout: journals in one second', status: rfp,
                 priority: IssuePriority.default || IssuePriority.first)
ties.save!
stamp = Time.utc(2024, 3, 1, 9, 0, 0)
tie_journals = [[carol, 'CQ approved: first in that second', stamp],
                [carol, 'CQ withdrawn: same second, later id', stamp],
                [quinn, 'QA PASS: latest id, stamped a minute earlier', stamp - 60]].map do |u, note, at|
  j = Journal.create!(journalized: ties, user: u, notes: note)
  j.update_column(:created_on, at)
  j.id
end

puts JSON.generate({
  'admin' => api_key(admin), 'deploybot' => api_key(bot), 'alice' => api_key(alice),
  'carol' => api_key(carol), 'quinn' => api_key(quinn), 'dora' => api_key(dora), 'bob' => api_key(bob),
  'user_ids' => {'deploybot' => bot.id, 'alice' => alice.id, 'carol' => carol.id, 'quinn' => quinn.id,
                 'dora' => dora.id, 'bob' => bob.id, 'admin' => admin.id},
  'issue' => issue.id, 'tie_issue' => ties.id, 'tie_journals' => tie_journals, 'project' => 'webshop'
})
"""


@dataclass
class Instance:
    url: str
    pid: int
    workdir: str
    keys: dict
    seconds: float

    def stop(self) -> None:
        stop(self.pid, self.workdir)

    def halt(self) -> None:
        """Stop the server by its PID but keep its files: start() brings the same Redmine back."""
        stop(self.pid)

    def start(self) -> None:
        """Start a halted server again: same port, same workdir, same data and keys."""
        workdir = Path(self.workdir)
        self.pid = _serve(workdir / "app", int(self.url.rsplit(":", 1)[1]),
                          workdir / "server.log").pid


def package_version() -> str:
    if not REDMINE_APP.is_dir():
        raise RuntimeError(
            "Redmine is not installed: DEBIAN_FRONTEND=noninteractive apt-get install -y "
            "--no-install-recommends redmine redmine-sqlite"
        )
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "redmine"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    return out.stdout.strip() or "unknown"


def _app_tree(root: Path, instance_src: Path | None) -> Path:
    """A copy of the Redmine app (~15 MB) whose `instances/` is our own: Redmine.root lives there
    and Ruby resolves symlinks, so a symlink farm would point back into /usr/share/redmine."""
    app = root / "app"
    shutil.copytree(REDMINE_APP, app, symlinks=True, ignore=shutil.ignore_patterns("instances", "Gemfile.lock"))
    # Bundler may rewrite the lock file: give it a private copy.
    shutil.copyfile(REDMINE_APP / "Gemfile.lock", app / "Gemfile.lock")
    inst = app / "instances" / TENANT
    if instance_src is None:
        for sub in ("config", "db", "log", "tmp/cache", "tmp/pids", "tmp/sessions", "files"):
            (inst / sub).mkdir(parents=True, exist_ok=True)
        (inst / "config" / "database.yml").write_text(
            # Relative paths resolve against the working directory, and every run has its own copy.
            "production:\n  adapter: sqlite3\n  database: <%= ENV.fetch('DEPLOYBOT_REDMINE_DB') %>\n"
            "  timeout: 5000\n"
            "  encoding: utf8\n"
        )
        (inst / "config" / "secret_key.txt").write_text(os.urandom(32).hex() + "\n")
    else:
        shutil.copytree(instance_src, inst, symlinks=True)
    return app


def _env(app: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUNDLE_", "GEM_", "RUBY"))}
    env.update(REDMINE_INSTANCE=TENANT, RAILS_ENV="production", HOME=str(app.parent),
               DEPLOYBOT_REDMINE_DB=str(app / "instances" / TENANT / "db" / "redmine.sqlite3"))
    return env


def _run(cmd: list[str], app: Path, log: Path) -> str:
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
    proc = subprocess.run(
        cmd, cwd=app, env=_env(app), capture_output=True, text=True, timeout=STEP_TIMEOUT, check=False
    )
    with log.open("a") as fh:
        fh.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        out = proc.stdout + proc.stderr
        # Ruby prints the message first and a long backtrace after it: show both ends.
        shown = out if len(out) < 4000 else f"{out[:2500]}\n[...]\n{out[-1000:]}"
        raise RuntimeError(f"{cmd[0]} {cmd[1]} failed ({proc.returncode}), see {log}:\n{shown}")
    return proc.stdout


def _build_template(target: Path) -> None:
    """Migrate and seed a fresh instance, then move it into place atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix="redmine-build-", dir=target.parent))
    try:
        log = build / "build.log"
        app = _app_tree(build, None)
        # Two processes: in one, load_default_data fails with "unknown attribute 'issues_visibility'".
        _run(["rake", "db:migrate"], app, log)
        _run(["rake", "redmine:load_default_data", "REDMINE_LANG=en"], app, log)
        seed = app / "instances" / TENANT / "seed.rb"
        seed.write_text(SEED_RUBY)
        out = _run(["bin/rails", "runner", str(seed)], app, log)
        keys = json.loads(out.strip().splitlines()[-1])
        inst = app / "instances" / TENANT
        (inst / "keys.json").write_text(json.dumps(keys))
        for sub in ("log", "tmp/cache"):
            shutil.rmtree(inst / sub, ignore_errors=True)
            (inst / sub).mkdir(parents=True)
        try:
            os.rename(inst, target)
        except OSError:
            if not (target / "keys.json").exists():  # someone else won the race: theirs is fine
                raise
    except BaseException:
        shutil.copyfile(log, target.parent / "last-failed-build.log") if log.exists() else None
        raise
    finally:
        shutil.rmtree(build, ignore_errors=True)


def seed_hash() -> str:
    """Part of the cache key: a changed seed must not reuse a template seeded the old way."""
    return hashlib.sha256(SEED_RUBY.encode()).hexdigest()[:12]


def template() -> Path:
    target = CACHE_ROOT / f"redmine-{package_version()}-{seed_hash()}" / TENANT
    if not (target / "keys.json").exists():
        shutil.rmtree(target, ignore_errors=True)
        try:
            _build_template(target)
        except RuntimeError:  # seen once under heavy load (sqlite busy): one more try, then give up
            shutil.rmtree(target, ignore_errors=True)
            _build_template(target)
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, deadline: float, log: Path) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Redmine exited with {proc.returncode}; log:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/issue_statuses.json", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"Redmine did not answer on {url} within {START_TIMEOUT} s; log:\n{_tail(log)}")


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-3000:]
    except OSError:
        return "(no log)"


def up(port: int | None = None, text_formatting: str | None = None) -> Instance:
    """Start a private Redmine from the cached template; bounded by STEP/START timeouts.
    `text_formatting` ("textile", "common_mark"): the instance's setting instead of the seed's."""
    started = time.monotonic()
    tpl = template()
    workdir = Path(tempfile.mkdtemp(prefix="deploybot-redmine-"))
    app = _app_tree(workdir, tpl)
    if text_formatting:
        _set_text_formatting(app, text_formatting)
    port = port or free_port()
    try:
        proc = _serve(app, port, workdir / "server.log")
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    keys = json.loads((tpl / "keys.json").read_text())
    return Instance(f"http://127.0.0.1:{port}", proc.pid, str(workdir), keys,
                    round(time.monotonic() - started, 1))


def _serve(app: Path, port: int, log: Path) -> subprocess.Popen:
    """The web server on 127.0.0.1:`port`, answering; stopped again by its PID if it does not."""
    with log.open("a") as fh:
        proc = subprocess.Popen(
            ["rackup", "-r", "webrick", "-E", "production", "-o", "127.0.0.1", "-p", str(port),
             "config.ru"],
            cwd=app, env=_env(app), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        _wait_ready(f"http://127.0.0.1:{port}", proc, time.monotonic() + START_TIMEOUT, log)
    except BaseException:
        stop(proc.pid)
        raise
    return proc


def _set_text_formatting(app: Path, value: str) -> None:
    """Settings have no REST API: write this copy's database before its server starts."""
    if value not in ("textile", "common_mark", "markdown", ""):
        raise ValueError(f"unknown Redmine text formatting {value!r}")
    db = sqlite3.connect(app / "instances" / TENANT / "db" / "redmine.sqlite3", timeout=10)
    try:
        with db:
            db.execute("UPDATE settings SET value = ?, updated_on = CURRENT_TIMESTAMP "
                       "WHERE name = 'text_formatting'", [value])
    finally:
        db.close()


def stop(pid: int, workdir: str | None = None, timeout: float = 10) -> None:
    """Stop the server by its PID (TERM, then KILL after `timeout`) and remove its copy."""
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not our child (CLI `down`): poll for existence
                done = 0 if _alive(pid) else pid
            if done:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
    except ProcessLookupError:
        pass
    if workdir and Path(workdir).name.startswith("deploybot-redmine-"):
        shutil.rmtree(workdir, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up")
    p_up.add_argument("--port", type=int)
    p_up.add_argument("--text-formatting", choices=["textile", "common_mark"])
    p_down = sub.add_parser("down")
    p_down.add_argument("pid", type=int)
    p_down.add_argument("workdir")
    args = parser.parse_args(argv)
    if args.cmd == "up":
        print(json.dumps(asdict(up(args.port, args.text_formatting)), indent=2))
    else:
        stop(args.pid, args.workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())

//! The schema as numbered migrations: `SQLITE[i]` takes a database from version `i` to
//! `i + 1` (`PRAGMA user_version`). A migration never changes once released.

/// SQLite migrations.
pub const SQLITE: &[&str] = &[
    // 1: the first release.
    r#"
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    team TEXT NOT NULL,
    admin INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE projects (
    name TEXT PRIMARY KEY,
    verifier BLOB NOT NULL,
    created_by TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE project_members (
    project TEXT NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    PRIMARY KEY (project, user)
);
CREATE TABLE vms (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    project TEXT NOT NULL REFERENCES projects(name),
    team TEXT NOT NULL,
    vcpus INTEGER NOT NULL,
    memory_mib INTEGER NOT NULL,
    idle TEXT NOT NULL,
    state TEXT NOT NULL,
    state_reason TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    UNIQUE (project, name)
);
CREATE TABLE vm_roles (
    vm TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
    user TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('owner', 'user')),
    seq INTEGER NOT NULL,
    PRIMARY KEY (vm, user)
);
CREATE TABLE drives (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    project TEXT NOT NULL REFERENCES projects(name),
    size_mib INTEGER NOT NULL,
    wrapped BLOB NOT NULL,
    attached_to TEXT REFERENCES vms(id) ON DELETE SET NULL,
    attach_seq INTEGER NOT NULL DEFAULT 0,
    UNIQUE (project, name)
);
CREATE TABLE drive_owners (
    drive TEXT NOT NULL REFERENCES drives(id) ON DELETE CASCADE,
    user TEXT NOT NULL,
    PRIMARY KEY (drive, user)
);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    vm TEXT,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_vm ON audit(vm, id);
CREATE INDEX audit_actor ON audit(actor, id);
"#,
    // 2: the schema states the cross-row invariants itself. A role (vm_roles) or a drive
    // ownership needs a project membership, and a role needs a registered user of the VM's
    // team (composite foreign keys, so a user holding roles can be neither deleted nor moved
    // to another team, nor removed from the project). Names are unique only among what their
    // creator sees (no UNIQUE (project, name)). Image files are named by a storage id that no
    // answer shows. New share pairs wait for delivery (`delivered`, `next_verifier`,
    // `next_wrapped`), and image files are announced before they exist (`image_intents`).
    // Rows that broke the invariants under the first release are not carried over.
    r#"
CREATE TABLE users2 (
    name TEXT PRIMARY KEY,
    team TEXT NOT NULL,
    admin INTEGER NOT NULL DEFAULT 0,
    UNIQUE (name, team)
);
INSERT INTO users2 (name, team, admin) SELECT name, team, admin FROM users;

CREATE TABLE projects2 (
    name TEXT PRIMARY KEY,
    verifier BLOB NOT NULL,
    next_verifier BLOB,
    delivered INTEGER NOT NULL DEFAULT 1,
    created_by TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
INSERT INTO projects2 (name, verifier, created_by, created_ms)
    SELECT name, verifier, created_by, created_ms FROM projects;

CREATE TABLE project_members2 (
    project TEXT NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    PRIMARY KEY (project, user)
);
INSERT INTO project_members2 (project, user)
    SELECT m.project, m.user FROM project_members m JOIN users u ON u.name = m.user;

CREATE TABLE vms2 (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    project TEXT NOT NULL REFERENCES projects(name),
    team TEXT NOT NULL,
    vcpus INTEGER NOT NULL,
    memory_mib INTEGER NOT NULL,
    idle TEXT NOT NULL,
    state TEXT NOT NULL,
    state_reason TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    UNIQUE (id, project, team)
);
INSERT INTO vms2 SELECT id, name, project, team, vcpus, memory_mib, idle, state, state_reason,
    created_ms FROM vms;

CREATE TABLE vm_roles2 (
    vm TEXT NOT NULL,
    user TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('owner', 'user')),
    seq INTEGER NOT NULL,
    project TEXT NOT NULL,
    team TEXT NOT NULL,
    PRIMARY KEY (vm, user),
    FOREIGN KEY (vm, project, team) REFERENCES vms(id, project, team) ON DELETE CASCADE,
    FOREIGN KEY (user, team) REFERENCES users(name, team),
    FOREIGN KEY (project, user) REFERENCES project_members(project, user)
);
INSERT INTO vm_roles2 (vm, user, role, seq, project, team)
    SELECT r.vm, r.user, r.role, r.seq, v.project, v.team FROM vm_roles r
    JOIN vms v ON v.id = r.vm
    JOIN users u ON u.name = r.user AND u.team = v.team
    JOIN project_members m ON m.project = v.project AND m.user = r.user;

CREATE TABLE drives2 (
    id TEXT PRIMARY KEY,
    storage TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    project TEXT NOT NULL REFERENCES projects(name),
    size_mib INTEGER NOT NULL,
    wrapped BLOB NOT NULL,
    next_wrapped BLOB,
    attached_to TEXT REFERENCES vms(id) ON DELETE SET NULL,
    attach_seq INTEGER NOT NULL DEFAULT 0,
    UNIQUE (id, project)
);
-- Images of the first release are named by their drive id; they keep that name.
INSERT INTO drives2 (id, storage, name, project, size_mib, wrapped, attached_to, attach_seq)
    SELECT id, id, name, project, size_mib, wrapped, attached_to, attach_seq FROM drives;

CREATE TABLE drive_owners2 (
    drive TEXT NOT NULL,
    user TEXT NOT NULL,
    project TEXT NOT NULL,
    PRIMARY KEY (drive, user),
    FOREIGN KEY (drive, project) REFERENCES drives(id, project) ON DELETE CASCADE,
    FOREIGN KEY (project, user) REFERENCES project_members(project, user)
);
INSERT INTO drive_owners2 (drive, user, project)
    SELECT o.drive, o.user, d.project FROM drive_owners o
    JOIN drives d ON d.id = o.drive
    JOIN project_members m ON m.project = d.project AND m.user = o.user;

CREATE TABLE image_intents (
    storage TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL
);

DROP TABLE drive_owners;
DROP TABLE vm_roles;
DROP TABLE drives;
DROP TABLE vms;
DROP TABLE project_members;
DROP TABLE projects;
DROP TABLE users;
ALTER TABLE users2 RENAME TO users;
ALTER TABLE projects2 RENAME TO projects;
ALTER TABLE project_members2 RENAME TO project_members;
ALTER TABLE vms2 RENAME TO vms;
ALTER TABLE vm_roles2 RENAME TO vm_roles;
ALTER TABLE drives2 RENAME TO drives;
ALTER TABLE drive_owners2 RENAME TO drive_owners;
CREATE INDEX project_members_user ON project_members(user);
CREATE INDEX vms_project_name ON vms(project, name);
CREATE INDEX vm_roles_user ON vm_roles(user);
CREATE INDEX vm_roles_member ON vm_roles(project, user);
CREATE INDEX drives_project_name ON drives(project, name);
CREATE INDEX drives_attached ON drives(attached_to);
CREATE INDEX drive_owners_user ON drive_owners(user);
CREATE INDEX drive_owners_member ON drive_owners(project, user);
"#,
    // 3: the user-name columns are called `username`: `user` is a reserved word in SQL
    // (PostgreSQL reads a bare `user` as the session's login, without an error). SQLite
    // renames the column in the foreign keys and indexes that name it too.
    r#"
ALTER TABLE project_members RENAME COLUMN user TO username;
ALTER TABLE vm_roles RENAME COLUMN user TO username;
ALTER TABLE drive_owners RENAME COLUMN user TO username;
"#,
    // 4: a fleet (DESIGN section 7). Each agent's host, with its heartbeat; the host that
    // holds a VM while it is not stopped; the host that announced an image (only it may
    // clean it up, as long as it is up).
    r#"
CREATE TABLE hosts (
    name TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    agent TEXT NOT NULL DEFAULT ''
);
ALTER TABLE vms ADD COLUMN host TEXT;
ALTER TABLE image_intents ADD COLUMN host TEXT;
ALTER TABLE projects ADD COLUMN host TEXT;
"#,
    // 5: fleet unlock (DESIGN section 7). Each host's public key (age X25519), whether an
    // admin enrolled it, and when it was fenced; the envelopes of pending halves and rebuilt
    // keys, one per enrolled host; and a counter every change of a project's envelopes moves,
    // so agents judging an unlock at once cannot both win. SQLite never fills these tables.
    r#"
ALTER TABLE hosts ADD COLUMN pubkey TEXT;
ALTER TABLE hosts ADD COLUMN enrolled INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN fenced_ms INTEGER;
ALTER TABLE projects ADD COLUMN seal_gen INTEGER NOT NULL DEFAULT 0;
CREATE TABLE envelopes (
    project TEXT NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('admin', 'member', 'key')),
    host TEXT NOT NULL REFERENCES hosts(name) ON DELETE CASCADE,
    from_user TEXT NOT NULL DEFAULT '',
    expires_ms INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (project, kind, host)
);
"#,
];

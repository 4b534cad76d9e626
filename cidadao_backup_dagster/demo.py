"""A demo database shaped like Cidadão.AI's: the strategy's `investigations` and `agent_instances` tables
with realistic synthetic rows, generated server-side so even large sizes are quick."""

from __future__ import annotations

import psycopg
from psycopg import sql

from .core.postgres.client import PgConnection

SCHEMA = """
CREATE TABLE IF NOT EXISTS investigations (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     text NOT NULL,
    query       text NOT NULL,
    status      text NOT NULL CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    results     jsonb,
    metadata    jsonb NOT NULL DEFAULT '{}'::jsonb,
    confidence  numeric(5, 4),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS investigations_created_at ON investigations (created_at);
CREATE INDEX IF NOT EXISTS investigations_status ON investigations (status);

CREATE TABLE IF NOT EXISTS agent_instances (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    agent_name      text NOT NULL,
    agent_type      text NOT NULL,
    status          text NOT NULL,
    capabilities    text[] NOT NULL DEFAULT '{}',
    config          jsonb NOT NULL DEFAULT '{}'::jsonb,
    tasks_completed integer NOT NULL DEFAULT 0,
    last_heartbeat  timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);
"""

# Cidadão.AI's agents are named after Brazilian historical and cultural figures.
AGENTS = [
    ("Abaporu", "master"),
    ("Zumbi dos Palmares", "investigator"),
    ("Anita Garibaldi", "analyst"),
    ("Tiradentes", "reporter"),
    ("Nanã", "memory"),
    ("José Bonifácio", "policy"),
    ("Machado de Assis", "text_analyst"),
    ("Carlos Drummond", "communicator"),
    ("Ayrton Senna", "router"),
    ("Dandara", "social_equity"),
    ("Lampião", "regional"),
    ("Maria Quitéria", "security"),
    ("Oscar Niemeyer", "visualizer"),
    ("Ceuci", "predictive"),
    ("Obaluaiê", "corruption_detector"),
    ("Oxóssi", "fraud_hunter"),
]

INVESTIGATIONS_SQL = """
INSERT INTO investigations (user_id, query, status, results, metadata, confidence, created_at, updated_at)
SELECT
    'user-' || (g % 997),
    (ARRAY['Contratos emergenciais de', 'Licitações com preço acima da média em', 'Pagamentos a fornecedores de',
           'Despesas com diárias em', 'Convênios suspeitos de', 'Aditivos contratuais em'])[1 + g % 6]
      || ' ' || (ARRAY['merenda escolar', 'saúde', 'obras públicas', 'transporte', 'tecnologia',
                       'segurança'])[1 + g % 5]
      || ' — ' || (ARRAY['Ministério da Saúde', 'Prefeitura de São Paulo', 'Governo do Pará', 'MEC',
                         'Ministério da Defesa', 'Câmara de Recife', 'DNIT'])[1 + g % 7]
      || ' (' || (2019 + g % 6) || ')',
    (ARRAY['completed', 'completed', 'completed', 'running', 'pending', 'failed', 'cancelled'])[1 + g % 7],
    jsonb_build_object(
        'anomalies', jsonb_build_array(
            jsonb_build_object('type', (ARRAY['price_deviation', 'vendor_concentration', 'temporal_pattern',
                                              'duplicate_contract'])[1 + g % 4],
                               'score', round((random())::numeric, 4),
                               'contract_id', 'CT-' || lpad((g * 7919 % 1000000)::text, 7, '0'),
                               'amount_brl', round((random() * 5000000)::numeric, 2))),
        'summary', 'Foram analisados ' || (g % 500 + 10) || ' contratos; ' || (g % 13) || ' com indícios.',
        'sources', jsonb_build_array('portal_transparencia', 'tce', 'siafi')),
    jsonb_build_object('agents', jsonb_build_array('Zumbi dos Palmares', 'Anita Garibaldi', 'Tiradentes'),
                       'duration_ms', (random() * 90000)::int, 'model', 'cidadao-ai-v' || (1 + g % 3),
                       'ip_hash', md5(g::text)),
    round((0.5 + random() / 2)::numeric, 4),
    now() - make_interval(secs => (g::double precision / %(rows)s) * 30 * 86400),
    now() - make_interval(secs => (g::double precision / %(rows)s) * 29 * 86400)
FROM generate_series(1, %(rows)s) AS g
"""


def ensure_database(admin: PgConnection, dbname: str) -> bool:
    """Create `dbname` on admin's server if absent. Returns True when it was created."""
    with admin.connect(autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if exists:
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        return True


def seed(target: PgConnection, investigations: int = 20_000) -> dict[str, int]:
    """Create the tables and fill them when empty; returns the row counts."""
    with target.connect() as conn:
        conn.execute(SCHEMA)
        if conn.execute("SELECT count(*) FROM investigations").fetchone()[0] == 0:
            # No query parameters: the SQL is full of `%` operators, and the row count is an int we control.
            conn.execute(INVESTIGATIONS_SQL.replace("%(rows)s", str(int(investigations))))
        if conn.execute("SELECT count(*) FROM agent_instances").fetchone()[0] == 0:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO agent_instances (agent_name, agent_type, status, capabilities, config, "
                    "tasks_completed, last_heartbeat) VALUES (%s, %s, %s, %s, %s, %s, now() - %s * interval '1 min')",
                    [
                        (
                            name,
                            kind,
                            "idle" if i % 3 else "busy",
                            [kind, "pt-BR"],
                            psycopg.types.json.Jsonb({"max_concurrency": 1 + i % 4, "temperature": 0.2}),
                            i * 37,
                            i,
                        )
                        for i, (name, kind) in enumerate(AGENTS)
                    ],
                )
        conn.commit()
        return {
            table: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0]
            for table in ("investigations", "agent_instances")
        }


def seed_redis(client, keys: int = 50) -> int:
    """A few cache-like demo keys (`cidadao:demo:*`: strings, a hash, a list, a set) so the first Redis snapshot
    is not empty; keys already there are left alone. Returns how many were added."""
    added = 0
    for i in range(keys):
        added += bool(client.set(f"cidadao:demo:investigation:{i}", f'{{"id": {i}, "status": "completed"}}', nx=True))
    if not client.exists("cidadao:demo:agents"):
        added += bool(client.hset("cidadao:demo:agents", mapping={name: kind for name, kind in AGENTS}))
    if not client.exists("cidadao:demo:queue"):
        added += bool(client.rpush("cidadao:demo:queue", *(f"task-{i}" for i in range(10))))
    if not client.exists("cidadao:demo:sources"):
        added += bool(client.sadd("cidadao:demo:sources", "portal_transparencia", "tce", "siafi"))
    return added

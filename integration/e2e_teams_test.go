package integration

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/integration/harness"
)

// A build secret restricted to a team (WEB_TOKEN, teams: [web] in the
// suite's secrets file) reaches the job of a submit token of that team; the
// same job submitted with another team's token is refused before any
// sandbox (or network) exists, naming the secret.
func TestTeamSecretGrantedToItsTeamRefusedToAnother(t *testing.T) {
	e := env(t)
	agentFor(t, e, "main", harness.AgentOptions{Labels: "lane=" + laneMain})
	ctx := timeout(t, 4*time.Minute)

	dir := copyExample(t, "hello")
	editSpec(t, dir, func(s map[string]any) {
		s["labels"] = map[string]any{"lane": laneMain}
		s["secrets"] = []any{"WEB_TOKEN"}
		s["build"] = `test -n "$WEB_TOKEN" && echo "team secret present" && npm run build`
	})
	web, api_ := teamToken(ctx, t, e, "web"), teamToken(ctx, t, e, "api")

	id := submit(ctx, t, e, dir, "--token", web)
	j := waitTerminal(ctx, t, e, id, 3*time.Minute)
	log := jobLog(ctx, t, e, id)
	if j.State != api.StateSucceeded || j.Team != "web" {
		t.Fatalf("team web's job %s: state %s, team %q, reason %q; want succeeded for web; log:\n%s", id, j.State, j.Team, j.Reason, log)
	}
	for _, want := range []string{"build secrets granted: WEB_TOKEN", "team secret present"} {
		if !strings.Contains(log, want) {
			t.Errorf("team web's log lacks %q; log:\n%s", want, log)
		}
	}
	if strings.Contains(log, webSecret) {
		t.Errorf("the team secret's value is in the log")
	}
	assertSandboxGone(ctx, t, e, id)

	watch := watchContainerd(ctx, t)
	id = submit(ctx, t, e, dir, "--token", api_)
	j = waitTerminal(ctx, t, e, id, time.Minute)
	log = jobLog(ctx, t, e, id)
	if j.State != api.StateFailed || j.Team != "api" || !strings.Contains(j.Reason, `"WEB_TOKEN"`) || !strings.Contains(j.Reason, `team is "api"`) {
		t.Errorf("team api's job %s: state %s, team %q, reason %q; want failed naming WEB_TOKEN and the team", id, j.State, j.Team, j.Reason)
	}
	assertNoSandboxEver(ctx, t, e, id, log, watch)
}

// teamToken creates a submit token of team with the admin token.
func teamToken(ctx context.Context, t *testing.T, e *harness.Env, team string) string {
	t.Helper()
	var tok api.TokenResponse
	if err := json.Unmarshal([]byte(cli(ctx, t, e, "token", "create", "--kind", "submit", "--team", team, "--expires", "1d", "--json")), &tok); err != nil || tok.Team != team {
		t.Fatalf("token create --team %s: %+v %v", team, tok, err)
	}
	return tok.Token
}

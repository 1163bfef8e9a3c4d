package registry

import (
	"context"
	"net"

	"github.com/cleanroom-ci/cleanroom/netpolicy"
)

// netnsDialer returns a DialContext that opens its sockets inside the named
// network namespace. A socket belongs to the namespace it was created in, so
// only the socket() call needs the switch; the connection is then used from
// any goroutine.
func netnsDialer(name string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var conn net.Conn
		err := doInNetNS(name, func() error {
			var d net.Dialer
			var err error
			conn, err = d.DialContext(ctx, network, addr)
			return err
		})
		return conn, err
	}
}

// doInNetNS runs fn inside the named network namespace.
func doInNetNS(name string, fn func() error) error {
	return netpolicy.Do("/run/netns/"+name, fn)
}

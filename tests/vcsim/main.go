// Command vcsim-launcher starts VMware's vCenter simulator (govmomi's `simulator`
// package, Debian's golang-github-vmware-govmomi-dev) for v2k's vSphere tests.
//
// It serves HTTPS with the certificate and key the test generated (the simulator's
// built-in certificate is an RSA-1024 CA that rustls refuses: FIELD-NOTES §7),
// enforces one user and password (taken from the environment, never argv), listens on
// loopback only, prints its URL on the first line of stdout, and exits when its stdin
// closes, so that a test that dies without killing it does not leave it running. The
// test builds it in GOPATH mode (GO111MODULE=off) and runs one per test, each with its
// own TMPDIR (where the simulated datastore lives). With VCSIM_REFUSE_QUERYPERF set in
// its environment, the PerformanceManager answers QueryPerf with a NoPermission fault, as
// a vCenter whose user lacks the privilege does (the test that a refused baseline is
// journalled and the VM still migrates).
package main

import (
	"bufio"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log"
	"net/url"
	"os"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// refusingPerf is the simulator's PerformanceManager with QueryPerf refused. It embeds
// the manager by value: the property collector digs the mo type out of a wrapper's
// first field, which must be a struct, not a pointer.
type refusingPerf struct {
	simulator.PerformanceManager
}

func (p *refusingPerf) QueryPerf(ctx *simulator.Context, req *types.QueryPerf) soap.HasFault {
	return &methods.QueryPerfBody{
		Fault_: simulator.Fault("QueryPerf refused: the user lacks System.View (test)",
			&types.NoPermission{PrivilegeId: "System.View"}),
	}
}

func main() {
	certFile := flag.String("cert", "", "PEM certificate to serve")
	keyFile := flag.String("key", "", "PEM private key of -cert")
	listen := flag.String("listen", "127.0.0.1:0", "loopback address to listen on")
	flag.Parse()

	user := os.Getenv("VCSIM_USER")
	password := os.Getenv("VCSIM_PASSWORD")
	if *certFile == "" || *keyFile == "" || user == "" || password == "" {
		log.Fatal("usage: VCSIM_USER=u VCSIM_PASSWORD=p vcsim-launcher -cert C -key K [-listen 127.0.0.1:0]")
	}
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		log.Fatalf("loading the certificate: %v", err)
	}

	model := simulator.VPX()
	// 1 datacenter, 1 cluster of 3 hosts, 1 standalone host, 2 VMs per resource pool.
	if err := model.Create(); err != nil {
		log.Fatalf("creating the inventory: %v", err)
	}
	defer model.Remove()

	if os.Getenv("VCSIM_REFUSE_QUERYPERF") != "" {
		ref := types.ManagedObjectReference{Type: "PerformanceManager", Value: "PerfMgr"}
		pm, ok := simulator.Map.Get(ref).(*simulator.PerformanceManager)
		if !ok {
			log.Fatal("no PerformanceManager to refuse QueryPerf on")
		}
		simulator.Map.Put(&refusingPerf{*pm})
	}

	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	// A URL with a user makes the simulator check Login's credentials
	// (otherwise it accepts any non-empty pair).
	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(user, password)}
	model.Service.RegisterEndpoints = true

	server := model.Service.NewServer()
	defer server.Close()

	u := *server.URL
	u.User = nil
	fmt.Println(u.String())
	os.Stdout.Sync()

	// Block until the parent closes our stdin (or dies).
	_, _ = io.Copy(io.Discard, bufio.NewReader(os.Stdin))
}

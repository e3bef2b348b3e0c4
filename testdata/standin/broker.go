package main

import (
	"flag"
	"os"
	"os/signal"
	"syscall"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// broker stands in for Mosquitto, as a stack's own MQTT broker: it takes
// every client on -listen (default :1883), as the old stack's anonymous
// Mosquitto did.
func broker(args []string) error {
	fs := flag.NewFlagSet("mosquitto", flag.ContinueOnError)
	listen := fs.String("listen", ":1883", "address to listen on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	srv := mochi.New(&mochi.Options{InlineClient: false})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		return err
	}
	if err := srv.AddListener(listeners.NewTCP(listeners.Config{ID: "tcp", Address: *listen})); err != nil {
		return err
	}
	logf("MQTT broker stand-in listening on %s", *listen)
	if err := srv.Serve(); err != nil {
		return err
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	<-sigs
	return srv.Close()
}

// Command standin stands in for Testflinger's programs in tests and the
// demo, where no real image can be pulled. Installed as testflinger-agent it
// logs like the agent (Checking jobs, Sleeping for N, Starting job <uuid>);
// installed as testflinger-server it answers the server's /v1 endpoint and
// can check itself for a container healthcheck; installed as mosquitto it is
// an MQTT broker that takes every client.
//
// Agent behaviour is tuned by environment variables:
//
//	STANDIN_JOB_EVERY=N      take a job every N polls (0: never)
//	STANDIN_JOB_DURATION=D   how long a job runs (default 5s)
//	STANDIN_EXIT_AFTER=D     exit after D with STANDIN_EXIT_CODE (default 1)
//	STANDIN_IGNORE_TERM=1    ignore SIGTERM
package main

import (
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"gopkg.in/yaml.v3"
)

func main() {
	var err error
	switch filepath.Base(os.Args[0]) {
	case "testflinger-server":
		err = server(os.Args[1:])
	case "mosquitto":
		err = broker(os.Args[1:])
	default:
		err = agent(os.Args[1:])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ERROR:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Printf("%s INFO: %s\n", time.Now().UTC().Format("2006-01-02 15:04:05,000"), fmt.Sprintf(format, args...))
}

func envDuration(name string, def time.Duration) time.Duration {
	if v := os.Getenv(name); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			return d
		}
	}
	return def
}

func agent(args []string) error {
	fs := flag.NewFlagSet("testflinger-agent", flag.ContinueOnError)
	confPath := fs.String("c", "", "agent configuration file")
	fs.Int("p", 0, "metrics port (ignored)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *confPath == "" {
		return errors.New("no config file given (-c)")
	}
	data, err := os.ReadFile(*confPath)
	if err != nil {
		return fmt.Errorf("cannot read config: %w", err)
	}
	var conf struct {
		AgentID         string `yaml:"agent_id"`
		PollingInterval int    `yaml:"polling_interval"`
	}
	if err := yaml.Unmarshal(data, &conf); err != nil {
		return fmt.Errorf("invalid config: %w", err)
	}
	if conf.PollingInterval <= 0 {
		conf.PollingInterval = 10
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1)
	if os.Getenv("STANDIN_IGNORE_TERM") == "1" {
		signal.Ignore(syscall.SIGTERM)
	}
	var exit <-chan time.Time
	if d := envDuration("STANDIN_EXIT_AFTER", 0); d > 0 {
		exit = time.After(d)
	}
	jobEvery, _ := strconv.Atoi(os.Getenv("STANDIN_JOB_EVERY"))
	jobDuration := envDuration("STANDIN_JOB_DURATION", 5*time.Second)
	logf("Starting testflinger-agent stand-in for %s", conf.AgentID)
	for poll := 1; ; poll++ {
		logf("Checking jobs")
		wait := time.Duration(conf.PollingInterval) * time.Second
		job := ""
		if jobEvery > 0 && poll%jobEvery == 0 {
			job = uuid()
			logf("Starting job %s", job)
			wait = jobDuration // a quiet job: nothing is logged until it ends
		} else {
			logf("Sleeping for %d", conf.PollingInterval)
		}
		timer := time.NewTimer(wait)
	waiting:
		select {
		case s := <-sigs:
			if s == syscall.SIGHUP || s == syscall.SIGUSR1 {
				logf("Received %s", s)
				goto waiting
			}
			logf("Received %s, exiting", s)
			return nil
		case <-exit:
			code, err := strconv.Atoi(os.Getenv("STANDIN_EXIT_CODE"))
			if err != nil {
				code = 1
			}
			fmt.Fprintf(os.Stderr, "ERROR: stand-in exiting with code %d as asked\n", code)
			os.Exit(code)
		case <-timer.C:
		}
		if job != "" {
			logf("Job %s finished", job)
		}
	}
}

func uuid() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

func server(args []string) error {
	if len(args) == 2 && args[0] == "check" {
		c := http.Client{Timeout: 2 * time.Second}
		resp, err := c.Get(args[1])
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode >= 500 {
			return fmt.Errorf("status %s", resp.Status)
		}
		return nil
	}
	fs := flag.NewFlagSet("testflinger-server", flag.ContinueOnError)
	listen := fs.String("listen", ":8000", "address to listen on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/v1", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "Testflinger server stand-in")
	})
	logf("Testflinger server stand-in listening on %s", *listen)
	return http.ListenAndServe(*listen, mux)
}

/*  =========================================================================
    runner — what kiln-worker and kiln-runner agree on

    The worker starts kiln-runner with an environment and reads back its
    exit status; these are the names and codes of that contract.
    =========================================================================
*/
#ifndef KILN_RUNNER_H_INCLUDED
#define KILN_RUNNER_H_INCLUDED

//  The environment a worker gives its runner.
#define KILN_ENV_BROKER_ENDPOINT "KILN_BROKER_ENDPOINT"
#define KILN_ENV_RUNNER_ID       "KILN_RUNNER_ID"
#define KILN_ENV_WORKER_ID       "KILN_WORKER_ID"
#define KILN_ENV_APP             "KILN_APP"
#define KILN_ENV_REVISION        "KILN_REVISION"
#define KILN_ENV_PUBLIC_URL      "KILN_PUBLIC_URL"
//  Where a runner that cannot start writes why, one line; the worker puts
//  it into the RUNNER_EXITED error. Optional.
#define KILN_ENV_RUNNER_STATUS_FILE "KILN_RUNNER_STATUS_FILE"

//  Exit codes of kiln-runner.
#define KILN_RUNNER_EXIT_OK             0   //  retired cleanly
#define KILN_RUNNER_EXIT_FAILED         1   //  lost its broker socket, out of memory
#define KILN_RUNNER_EXIT_INVALID_APP    2   //  not loadable, wrong ABI, bad descriptor
#define KILN_RUNNER_EXIT_SETUP_FAILED   3   //  setup() called kiln_setup_fail
#define KILN_RUNNER_EXIT_USAGE          64  //  bad arguments or environment
//  The worker's own code for "could not start it at all" (exec failed,
//  artifact refused): never an exit code of a runner that ran.
#define KILN_RUNNER_EXIT_NOT_STARTED    127

#endif

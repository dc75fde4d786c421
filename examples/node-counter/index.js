// A Node.js Lambda handler: counts invocations served by this warm instance.
let served = 0;

exports.handler = async (event, context) => {
  served += 1;
  return {
    served,
    path: event.rawPath ?? null,
    requestId: context.awsRequestId,
    remainingMs: context.getRemainingTimeInMillis(),
  };
};
